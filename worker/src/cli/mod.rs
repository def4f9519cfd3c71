//! The `orders` command line: [`args`] defines it, one module per group of commands runs
//! them, and `report` prints what a command returns and decides the exit status.
//!
//! Every command but `dev` and `worker` returns a report (see `report`): `--json` prints it
//! as JSON, otherwise as text for people, and a report that says the command failed makes
//! the process exit 1. `main.rs` only parses, sets up logging and calls [`run`].

pub mod args;
pub mod backups;
pub mod catalog;
#[cfg(feature = "dev")]
pub mod dev;
#[cfg(feature = "dev")]
mod dev_shards;
mod failing_steps;
pub mod imports;
pub mod load;
pub mod maintenance;
mod orders;
mod progress_bar;
mod report;
mod reshards;
pub mod shards;

use std::process::ExitCode;

use anyhow::Context;
use std::time::Duration;

use orders_core::OrderRequest;
use orders_core::read_pools::ReadPools;
use orders_core::store::customers::NewCustomer;
use orders_operations::recovery;
use orders_operations::reshard::ReshardRequest;
use orders_workflows::reshard::ReshardInput;

use args::{
    BackupCommand, Command, CustomerCommand, MigratePlan, ProductCommand, ReshardCommand,
    ShardsCommand,
};
pub use args::{Cli, LogFormat};
use orders_backup::pgbackrest::BackupKind;
use orders_backup::restore::RestoreTarget;
use report::emit;

use crate::cli::maintenance::audit;
use crate::cli::shards::explain;
use crate::client;
use crate::deployment::migrate;
use crate::worker;

/// Runs the command `cli` names and returns the exit status it calls for.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let json = cli.json;
    match cli.command {
        #[cfg(feature = "dev")]
        Command::Dev {
            state_dir,
            standbys,
            backups,
            temporal,
            metrics,
            api,
            mut imports,
        } => {
            // The local job imports from `<state dir>/imports` unless told otherwise.
            if imports.import_dir.is_none() {
                let dir = state_dir.join("imports");
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                imports.import_dir = Some(dir);
            }
            let serving = worker::Serving {
                metrics_addr: metrics.socket_addr()?,
                api_addr: api.socket_addr()?,
                api_token: api.token()?,
                cache: api.cache(),
                map_refresh: Duration::from_secs(30),
                reads: Default::default(),
                recovery: Default::default(),
                retention: Default::default(),
                shutdown_grace: worker::DEFAULT_SHUTDOWN_GRACE,
                steps: Default::default(),
                imports: imports.policy(),
            };
            dev::run(state_dir, standbys, backups, temporal, serving).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker {
            temporal,
            shards,
            metrics,
            api,
            recovery,
            retention,
            shutdown,
            steps,
            imports,
        } => {
            let serving = worker::Serving {
                metrics_addr: metrics.socket_addr()?,
                api_addr: api.socket_addr()?,
                api_token: api.token()?,
                cache: api.cache(),
                map_refresh: shards.map_refresh(),
                reads: shards.reads(),
                recovery: recovery.schedule(),
                retention: retention.schedule(),
                shutdown_grace: shutdown.grace(),
                steps: steps.steps,
                imports: imports.policy(),
            };
            let shards = shards.connect_for_worker().await?;
            let client = client::connect(&temporal).await?;
            let stop = worker::shutdown_signal();
            worker::run(client, &temporal.task_queue, shards, serving, stop).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { plan, shards } => {
            let plan = match plan {
                MigratePlan::Up { steps } => migrate::Plan::Up(steps),
                MigratePlan::Down { steps } => migrate::Plan::Down(steps.unwrap_or(1)),
                MigratePlan::Status => migrate::Plan::Status,
            };
            let shards = shards.connect_without_map().await?;
            emit(&shards::migrate(&shards, plan).await?, json)
        }
        Command::Customer { command } => match command {
            CustomerCommand::Add {
                name,
                email,
                credit_limit,
                id,
                shards,
            } => {
                let shards = shards.connect().await?;
                let (first_name, last_name) = NewCustomer::split_name(&name);
                let new = NewCustomer {
                    id,
                    first_name,
                    last_name,
                    email,
                    credit_limit,
                };
                emit(&catalog::add_customer(&shards, new).await?, json)
            }
            CustomerCommand::Update {
                id,
                name,
                email,
                shards,
            } => {
                let shards = shards.connect().await?;
                let updated =
                    catalog::update_customer(&shards, id, name.as_deref(), email.as_deref())
                        .await?;
                emit(&updated, json)
            }
        },
        Command::Product { command, shards } => {
            let shards = shards.connect().await?;
            let product = match command {
                ProductCommand::Add { id, stock, name } => {
                    catalog::add_product(&shards, id, name.as_deref(), stock).await?
                }
                ProductCommand::Get { id } => catalog::get_product(&shards, id).await?,
            };
            emit(&product, json)
        }
        Command::Submit {
            customer,
            items,
            notes,
            consistency,
            workflow_id,
            wait,
            temporal,
        } => {
            let client = client::connect(&temporal).await?;
            let request = OrderRequest {
                customer_id: customer,
                items,
                notes,
                consistency,
            };
            let submission =
                orders::submit(&client, &temporal.task_queue, &request, workflow_id, wait).await?;
            emit(&submission, json)
        }
        Command::SetStatus {
            order_id,
            status,
            temporal,
        } => {
            let client = client::connect(&temporal).await?;
            emit(
                &orders::set_status(&client, &temporal.task_queue, order_id, status.into()).await?,
                json,
            )
        }
        Command::Cancel { order_id, temporal } => {
            let client = client::connect(&temporal).await?;
            emit(
                &orders::cancel(&client, &temporal.task_queue, order_id).await?,
                json,
            )
        }
        Command::Get { order_id, shards } => {
            let shards = shards.connect().await?;
            emit(&orders::get(&shards, order_id).await?, json)
        }
        Command::List { page, shards } => {
            let reads = ReadPools::new(&shards.connect().await?, shards.reads());
            emit(&orders::list(&reads.within_lag(), page).await?, json)
        }
        Command::Counts { shards } => {
            let reads = ReadPools::new(&shards.connect().await?, shards.reads());
            emit(&orders::counts(&reads.within_lag()).await, json)
        }
        Command::Shards {
            command,
            shards: settings,
        } => {
            let shards = settings.connect_without_map().await?;
            if let Err(e) = shards.refresh_map().await {
                tracing::warn!(error = %e, "showing the initial shard map");
            }
            match command {
                Some(ShardsCommand::Plan { to }) => {
                    emit(&shards::state::growth_plan(&shards.map(), to)?, json)
                }
                None => emit(
                    &shards::state::report(&shards, settings.pool_size).await,
                    json,
                ),
            }
        }
        Command::Fill { volume, shards } => {
            let shards = shards.connect().await?;
            emit(&shards::fill(&shards, volume).await?, json)
        }
        Command::Explain { shards } => {
            let shards = shards.connect().await?;
            emit(&explain::explain_all(&shards).await, json)
        }
        Command::Import {
            file,
            chunk_size,
            detach,
            workflow_id,
            temporal,
        } => {
            let client = client::connect(&temporal).await?;
            let options = imports::ImportOptions {
                chunk_size,
                workflow_id,
                detach,
                progress: !json,
            };
            let status = imports::start(&client, &temporal.task_queue, &file, options).await?;
            emit(&status, json)
        }
        Command::ImportStatus {
            workflow_id,
            temporal,
        } => {
            let client = client::connect(&temporal).await?;
            emit(&imports::status(&client, &workflow_id).await?, json)
        }
        Command::Reshard {
            command,
            to,
            move_bucket,
            chunk_rows,
            buckets_per_move,
            clean_up_after,
            detach,
            temporal,
        } => {
            let client = client::connect(&temporal).await?;
            let status = match command {
                Some(ReshardCommand::Status) => reshards::status(&client).await?,
                Some(ReshardCommand::Cancel) => reshards::cancel(&client).await?,
                None => {
                    let request = match (move_bucket, to) {
                        (Some(bucket), Some(to)) => ReshardRequest::Bucket { bucket, to },
                        (None, Some(shards)) => ReshardRequest::Shards { shards },
                        (_, None) => anyhow::bail!(
                            "say where to: `orders reshard --to N` (shard count) or `orders reshard --move-bucket B --to S`"
                        ),
                    };
                    let input = ReshardInput {
                        request,
                        chunk_rows: chunk_rows.max(1),
                        buckets_per_move: buckets_per_move.max(1),
                        clean_up_after_secs: clean_up_after,
                    };
                    reshards::start(&client, &temporal.task_queue, input).await?;
                    if detach {
                        reshards::status(&client).await?
                    } else {
                        reshards::watch(&client, !json).await?
                    }
                }
            };
            emit(&status, json)
        }
        Command::Replay { paths } => emit(&maintenance::replay(&paths).await?, json),
        Command::Recover {
            grace_secs,
            temporal,
            shards,
        } => {
            let client = client::connect(&temporal).await?;
            let shards = shards.connect().await?;
            let grace = Duration::from_secs(grace_secs);
            emit(
                &recovery::recover(
                    &shards,
                    &client,
                    grace,
                    &orders_core::metrics::OrderMetrics::disabled(),
                )
                .await,
                json,
            )
        }
        Command::Backup {
            command,
            incremental,
            repository,
            shards,
        } => match command {
            None => {
                let repository = repository.repository()?;
                let kind = if incremental {
                    BackupKind::Incremental
                } else {
                    BackupKind::Full
                };
                let count = shards.urls()?.len();
                emit(&backups::back_up(&repository, count, kind).await?, json)
            }
            Some(BackupCommand::List) => {
                let repository = repository.repository()?;
                let shards = shards.connect().await?;
                emit(&backups::list(&repository, &shards).await?, json)
            }
            Some(BackupCommand::Point { name }) => {
                let shards = shards.connect().await?;
                emit(&backups::take_point(&shards, &name).await?, json)
            }
        },
        Command::Restore {
            point,
            into,
            first_port,
            repository,
            shards,
        } => {
            let repository = repository.repository()?;
            let live = match shards.urls() {
                Ok(_) => Some(shards.connect().await?),
                Err(_) => None,
            };
            let target = RestoreTarget { into, first_port };
            emit(
                &backups::restore(&repository, &point, &target, live.as_ref()).await?,
                json,
            )
        }
        Command::Audit { grace_secs, shards } => {
            let shards = shards.connect().await?;
            let grace = Duration::from_secs(grace_secs);
            emit(&audit::run(&shards, grace).await?, json)
        }
        Command::Load {
            orders,
            concurrency,
            consistency,
            customers,
            products,
            stock,
            seed,
            temporal,
            shards,
        } => {
            let client = client::connect(&temporal).await?;
            let shards = shards.connect().await?;
            let plan = load::LoadPlan {
                orders,
                concurrency,
                consistency,
                customers,
                products,
                stock,
                seed: seed.unwrap_or_else(seed_from_clock),
                run_id: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
            };
            let report = load::run(&client, &temporal.task_queue, &shards, &plan, !json).await?;
            emit(&report, json)
        }
    }
}

/// A seed for `orders load` when none is given.
fn seed_from_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

/// Logs go through `tracing`, filtered by `ORDERS_LOG` (an `EnvFilter`): to stderr, except
/// under `orders dev`, whose narration would drown in every step's INFO line: there they go
/// to `log_file` (`orders dev` prints its path) and only warnings and errors reach stderr.
pub fn init_tracing(format: LogFormat, log_file: Option<&std::path::Path>) -> anyhow::Result<()> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("ORDERS_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(
                "info,sqlx=warn,sea_orm_migration=warn,temporalio_sdk_core=warn",
            )
        })
    };
    let Some(path) = log_file else {
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr);
        match format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().init(),
        }
        return Ok(());
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("failed to open the log file {}", path.display()))?;
    let to_file = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file));
    let to_file = match format {
        LogFormat::Text => to_file.with_filter(filter()).boxed(),
        LogFormat::Json => to_file.json().with_filter(filter()).boxed(),
    };
    let to_stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(tracing_subscriber::filter::LevelFilter::WARN);
    tracing_subscriber::registry()
        .with(to_file)
        .with(to_stderr)
        .init();
    Ok(())
}

impl Cli {
    /// Where this command's logs go instead of stderr: `orders dev`'s worker log.
    pub fn log_file(&self) -> Option<std::path::PathBuf> {
        match &self.command {
            #[cfg(feature = "dev")]
            Command::Dev { state_dir, .. } => Some(dev::log_file(state_dir)),
            _ => None,
        }
    }
}
