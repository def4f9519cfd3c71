//! `orders dev`: everything a newcomer needs on one machine, in one command.
//!
//! Starts (or reuses) a Temporal dev server with its Web UI and history in the state
//! directory, four PostgreSQL shards (single clusters, or with `--standbys` each a primary and
//! a synchronous standby under pg_auto_failover; with `--backups`, archived by pgBackRest),
//! migrates them, seeds demo customers, runs the worker,
//! places sample orders (one of them declined, to show compensation), prints where to look,
//! and on Ctrl-C stops everything it started.

use anyhow::Context;
use rust_decimal::Decimal;
use std::path::PathBuf;
use std::str::FromStr;

use orders_core::shards::PoolSettings;
use orders_core::store::customers::{self, NewCustomer};
use orders_core::{Consistency, OrderRequest, Shards};

use super::dev_shards::DevShards;
use crate::client::{self, OrderOutcome};
use crate::config::TemporalSettings;
use crate::deployment::migrate;
use orders_dev::{TemporalDevServer, TemporalOptions};

/// gRPC port of the dev Temporal server; its Web UI is on this + 1000.
pub const TEMPORAL_PORT: u16 = 7233;
/// Web UI port of the dev Temporal server.
pub const TEMPORAL_UI_PORT: u16 = 8233;

/// Demo customers: (id, name, email, credit limit). Ids 1–4 land on shards 1, 2, 3, 0.
const DEMO_CUSTOMERS: [(i64, &str, &str, &str); 4] = [
    (1, "Ada Lovelace", "ada@example.com", "500.00"),
    (2, "Grace Hopper", "grace@example.com", "1000.00"),
    (3, "Alan Turing", "alan@example.com", "50.00"),
    (4, "Katherine Johnson", "katherine@example.com", "2000.00"),
];

/// PlaceOrder's search attributes as `Name=Type`.
pub fn search_attribute_flags() -> Vec<String> {
    use orders_workflows::search_attributes::{REGISTRATION, cli_type_name};
    REGISTRATION
        .iter()
        .map(|&(name, kind)| format!("{name}={}", cli_type_name(kind)))
        .collect()
}

/// The worker's log under `orders dev`: a file in the state directory, so the terminal shows
/// the narration (services, sample orders, where to look) and only warnings and errors.
pub fn log_file(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("worker.log")
}

/// How to run this binary from the current directory: `target/debug/orders` from the
/// repository root, where `scripts/dev.sh` runs it; `orders` if it is on the `PATH`.
fn this_binary() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "orders".into();
    };
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("orders") == exe));
    if on_path {
        return "orders".into();
    }
    std::env::current_dir()
        .ok()
        .and_then(|cwd| exe.strip_prefix(cwd).ok().map(|p| p.display().to_string()))
        .unwrap_or_else(|| exe.display().to_string())
}

/// The services `orders dev` runs; dropping it stops what it started.
pub struct DevStack {
    /// Where clusters, Temporal's history and the logs live (absolute).
    pub state_dir: PathBuf,
    pub temporal: TemporalDevServer,
    pub shards: DevShards,
    /// The pgBackRest config the shards archive through (`--backups`).
    pub backups: Option<PathBuf>,
}

impl DevStack {
    /// Starts or reuses Temporal and the shards under `state_dir`, creating the databases.
    pub async fn start(state_dir: PathBuf, standbys: bool, backups: bool) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&state_dir)
            .with_context(|| format!("failed to create state directory {}", state_dir.display()))?;
        let state_dir = state_dir.canonicalize()?;
        eprintln!(
            "▶ Temporal dev server (history in {}/temporal.db)",
            state_dir.display()
        );
        let temporal = tokio::task::block_in_place(|| {
            TemporalDevServer::start(TemporalOptions {
                port: TEMPORAL_PORT,
                ui_port: Some(TEMPORAL_UI_PORT),
                db_file: Some(state_dir.join("temporal.db")),
                metrics_port: None,
                log_file: state_dir.join("temporal.log"),
                search_attributes: search_attribute_flags(),
                namespaces: Vec::new(),
            })
        })?;
        temporal.register_search_attributes("default", &search_attribute_flags())?;
        let shards = DevShards::start(&state_dir, standbys, backups).await?;
        Ok(Self {
            backups: backups.then(|| DevShards::backups_config(&state_dir)),
            state_dir,
            temporal,
            shards,
        })
    }
}

/// Runs the whole demo until Ctrl-C.
pub async fn run(
    state_dir: PathBuf,
    standbys: bool,
    backups: bool,
    temporal_settings: TemporalSettings,
    serving: crate::worker::Serving,
) -> anyhow::Result<()> {
    let stack = DevStack::start(state_dir, standbys, backups).await?;
    let settings = TemporalSettings {
        address: stack.temporal.address(),
        ..temporal_settings
    };
    let urls = stack.shards.urls();
    let shards = Shards::connect_lazy(&urls, PoolSettings::default()).await?;
    eprintln!("▶ migrating {} shards", shards.len());
    for v in migrate::run(&shards, migrate::Plan::Up(None)).await? {
        eprintln!(
            "  shard {}: {}",
            v.shard,
            v.version.as_deref().unwrap_or("(empty)")
        );
    }
    seed_customers(&shards).await?;
    seed_products(&shards).await?;
    let client = client::connect(&settings).await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = crate::worker::run(
        client.clone(),
        &settings.task_queue,
        shards.clone(),
        serving.clone(),
        async {
            let _ = stop_rx.await;
        },
    );
    let demo = async {
        place_sample_orders(&client, &settings.task_queue).await?;
        print_where_to_look(&stack, &urls, &settings, &serving);
        crate::worker::shutdown_signal().await;
        eprintln!("\n▶ stopping the worker, then the services this command started");
        anyhow::Ok(())
    };
    tokio::pin!(worker, demo);
    tokio::select! {
        ended = &mut worker => {
            ended?;
            anyhow::bail!("the worker stopped unexpectedly");
        }
        finished = &mut demo => {
            let _ = stop_tx.send(());
            finished?;
        }
    }
    worker.await?;
    shards.close().await;
    Ok(())
}

async fn seed_customers(shards: &Shards) -> anyhow::Result<()> {
    for (id, name, email, limit) in DEMO_CUSTOMERS {
        let shard = shards.for_customer(id);
        if customers::find(&shard.conn, id)
            .await
            .map_err(|e| shard.error(e))?
            .is_some()
        {
            continue;
        }
        let (first_name, last_name) = NewCustomer::split_name(name);
        let new = NewCustomer {
            id: Some(id),
            first_name,
            last_name,
            email: email.to_owned(),
            credit_limit: Decimal::from_str(limit)?,
        };
        crate::cli::catalog::customers::add(shards, new).await?;
        eprintln!(
            "  seeded customer {id} ({name}, credit {limit}) on shard {}",
            shard.index
        );
    }
    Ok(())
}

/// The demo's products: (id, name, stock on hand).
const DEMO_PRODUCTS: [(i64, &str, i32); 4] = [
    (7, "The Art of Computer Programming", 100),
    (11, "Mechanical keyboard", 5),
    (12, "USB-C cable", 500),
    (21, "Desk lamp", 20),
];

/// Stocks the demo's products, leaving any that already exist as they are.
async fn seed_products(shards: &Shards) -> anyhow::Result<()> {
    for (id, name, stock) in DEMO_PRODUCTS {
        if crate::cli::catalog::products::get(shards, id)
            .await?
            .is_some()
        {
            continue;
        }
        crate::cli::catalog::products::add(shards, id, Some(name), stock).await?;
        eprintln!(
            "  seeded product {id} ({name}, {stock} in stock) on shard {}",
            shards.for_product(id).index
        );
    }
    Ok(())
}

/// One of the demo's orders.
struct Sample {
    /// What it shows.
    label: &'static str,
    customer_id: i64,
    /// As `orders submit --item` takes them: PRODUCT:QUANTITY:UNIT_PRICE.
    items: &'static [&'static str],
    notes: Option<&'static str>,
    consistency: Consistency,
}

const SAMPLE_ORDERS: [Sample; 5] = [
    Sample {
        label: "Ada buys two books",
        customer_id: 1,
        items: &["7:2:19.99"],
        notes: Some("gift wrap"),
        consistency: Consistency::Saga,
    },
    Sample {
        label: "Grace buys a keyboard and cables",
        customer_id: 2,
        items: &["11:1:129.00", "12:3:9.50"],
        notes: None,
        consistency: Consistency::Saga,
    },
    Sample {
        label: "Alan exceeds his 50.00 credit",
        customer_id: 3,
        items: &["21:1:80.00"],
        notes: None,
        consistency: Consistency::Saga,
    },
    Sample {
        label: "Grace buys a book and a lamp with two-phase commit",
        customer_id: 2,
        items: &["7:1:19.99", "21:1:24.00"],
        notes: None,
        consistency: Consistency::TwoPhase,
    },
    Sample {
        label: "Katherine wants 10 keyboards, 5 are in stock (two-phase: nothing is written)",
        customer_id: 4,
        items: &["11:10:129.00"],
        notes: None,
        consistency: Consistency::TwoPhase,
    },
];

impl Sample {
    fn request(&self) -> anyhow::Result<OrderRequest> {
        Ok(OrderRequest {
            customer_id: self.customer_id,
            items: self
                .items
                .iter()
                .map(|item| item.parse())
                .collect::<Result<_, _>>()?,
            notes: self.notes.map(str::to_owned),
            consistency: self.consistency,
        })
    }
}

async fn place_sample_orders(
    client: &temporalio_client::Client,
    task_queue: &str,
) -> anyhow::Result<()> {
    eprintln!("▶ placing sample orders");
    let run = uuid::Uuid::new_v4().simple().to_string();
    for (i, sample) in SAMPLE_ORDERS.iter().enumerate() {
        let workflow_id = format!("demo-{}-{i}", &run[..8]);
        let request = sample.request()?;
        let undone = match sample.consistency {
            Consistency::Saga => "compensated",
            Consistency::TwoPhase => "rolled back",
        };
        client::start_order(client, task_queue, &workflow_id, &request).await?;
        let outcome = client::order_outcome(client, &workflow_id).await?;
        let summary = match outcome {
            OrderOutcome::Placed(p) => format!(
                "confirmed ({}): order {} on shard {}, total {}",
                p.consistency, p.order_id, p.shard, p.total_amount
            ),
            OrderOutcome::Failed {
                failure_type,
                message,
            } => format!("{failure_type} ({undone}): {message}"),
            other => format!("{other:?}"),
        };
        eprintln!("  {workflow_id}  {}: {summary}", sample.label);
    }
    Ok(())
}

fn print_where_to_look(
    stack: &DevStack,
    urls: &[String],
    settings: &TemporalSettings,
    serving: &crate::worker::Serving,
) {
    let ui = stack
        .temporal
        .ui_url()
        .unwrap_or_else(|| "(headless)".into());
    eprintln!("\n✔ orders dev is running");
    eprintln!(
        "  Temporal Web UI : {ui}/namespaces/{}/workflows",
        settings.namespace
    );
    eprintln!(
        "  Temporal gRPC   : {} (task queue {:?})",
        settings.address, settings.task_queue
    );
    for (i, url) in urls.iter().enumerate() {
        eprintln!("  shard {i}         : {url}");
    }
    eprintln!(
        "  other terminals : export ORDERS_SHARDS={}",
        urls.join(",")
    );
    if let Some(config) = &stack.backups {
        eprintln!(
            "  backups         : export ORDERS_PGBACKREST_CONFIG={}",
            config.display()
        );
    }
    if let Some(addr) = serving.metrics_addr {
        eprintln!("  metrics         : http://{addr}/metrics");
    }
    if let Some(addr) = serving.api_addr {
        eprintln!("  read API        : http://{addr}/orders  (and /orders/ID, /orders/counts)");
    }
    eprintln!(
        "  worker log      : {}",
        log_file(&stack.state_dir).display()
    );
    let orders = this_binary();
    eprintln!("  try (after the export above, from this directory):");
    eprintln!("                    {orders} submit --customer 1 --item 7:1:19.99 --wait");
    eprintln!("                    {orders} shards; {orders} list; {orders} explain");
    if stack.backups.is_some() {
        eprintln!(
            "                    {orders} backup; {orders} backup point first; {orders} restore --point first --into /tmp/restored"
        );
    }
    eprintln!(
        "                    temporal workflow start --type PlaceOrder --task-queue orders --input '{{\"customer_id\": 2, \"items\": [{{\"product_id\": 7, \"quantity\": 1, \"unit_price\": \"5.00\"}}]}}'"
    );
    eprintln!("  stop            : Ctrl-C");
}
