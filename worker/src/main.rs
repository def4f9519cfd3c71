//! `orders`: the durable order-processing worker and its command line.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use rust_decimal::Decimal;
use sea_orm::ActiveEnum;
use std::path::PathBuf;

use orders_activities::cross_shard;
use orders_activities::store::customers::NewCustomer;
use orders_worker::client::{self, OrderOutcome};
use orders_worker::config::{
    MetricsSettings, ReadApiSettings, RecoverySettings, ShardSettings, TemporalSettings,
};
use orders_worker::{
    audit, customers, dev, explain, import, load, migrate, products, shard_report, synthetic,
    worker,
};

#[derive(Parser)]
#[command(
    name = "orders",
    version,
    about = "Durable order processing on Temporal and sharded PostgreSQL"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        value_enum,
        env = "ORDERS_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Start local Temporal + 4 PostgreSQL shards, the worker and sample orders; Ctrl-C stops.
    Dev {
        /// Where clusters, Temporal history and logs live.
        #[arg(long, env = "ORDERS_STATE_DIR", default_value = ".orders-dev")]
        state_dir: PathBuf,
        #[command(flatten)]
        temporal: TemporalSettings,
        #[command(flatten)]
        metrics: MetricsSettings,
        #[command(flatten)]
        api: ReadApiSettings,
    },
    /// Run the worker against the configured Temporal and shards until Ctrl-C or SIGTERM.
    Worker {
        #[command(flatten)]
        temporal: TemporalSettings,
        #[command(flatten)]
        shards: ShardSettings,
        #[command(flatten)]
        metrics: MetricsSettings,
        #[command(flatten)]
        api: ReadApiSettings,
        #[command(flatten)]
        recovery: RecoverySettings,
    },
    /// Apply, roll back or report migrations on every shard.
    Migrate {
        #[command(subcommand)]
        plan: MigratePlan,
        #[command(flatten)]
        shards: ShardSettings,
        #[arg(long)]
        json: bool,
    },
    /// Manage customers.
    Customer {
        #[command(subcommand)]
        command: CustomerCommand,
    },
    /// Place an order through the PlaceOrder workflow. Returns once the order is accepted
    /// (written) or refused; with --wait, once it is confirmed or failed.
    Submit {
        /// Customer id.
        #[arg(long)]
        customer: i64,
        /// An item as PRODUCT:QUANTITY:UNIT_PRICE, e.g. 7:2:19.99. Repeat for more items.
        #[arg(long = "item", required = true)]
        items: Vec<String>,
        #[arg(long)]
        notes: Option<String>,
        /// How the order's shards are kept consistent: saga (compensations) or two_phase
        /// (PREPARE TRANSACTION on every shard, then COMMIT PREPARED).
        #[arg(long, default_value = "saga", value_parser = ["saga", "two_phase"])]
        consistency: String,
        /// Workflow id (default: place-order-<uuid>).
        #[arg(long)]
        workflow_id: Option<String>,
        /// Wait for the outcome and print it.
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        temporal: TemporalSettings,
    },
    /// Move a confirmed order on: shipped, delivered or cancelled (credit is returned).
    SetStatus {
        order_id: i64,
        #[arg(value_parser = ["shipped", "delivered", "cancelled"])]
        status: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        temporal: TemporalSettings,
    },
    /// Replay recorded workflow histories (files or folders of JSON) against this build;
    /// exits non-zero naming each history that no longer replays.
    Replay {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Each shard: URL, reachable, migration, buckets, orders, customers, connections.
    Shards {
        #[command(subcommand)]
        command: Option<ShardsCommand>,
        #[arg(long, global = true)]
        json: bool,
        #[command(flatten)]
        shards: ShardSettings,
    },
    /// List orders newest first, from every shard (or one customer's), a page at a time.
    List {
        /// Only this customer's orders (read from their shard alone).
        #[arg(long)]
        customer: Option<i64>,
        #[arg(long, default_value_t = 20)]
        limit: u64,
        /// The `next_cursor` a previous page printed.
        #[arg(long, conflicts_with = "offset")]
        cursor: Option<String>,
        /// OFFSET pagination, as the article does it (slower at depth; for comparison).
        #[arg(long, conflicts_with = "customer")]
        offset: Option<u64>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        shards: ShardSettings,
    },
    /// Count orders by status across every shard; exits 1 if a shard did not answer.
    Counts {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        shards: ShardSettings,
    },
    /// Make synthetic customers and orders on every shard (development and load-test
    /// databases only), e.g. before `orders explain`.
    Fill {
        #[arg(long, default_value_t = 1_000)]
        customers_per_shard: u32,
        #[arg(long, default_value_t = 100_000)]
        orders_per_shard: u32,
        #[command(flatten)]
        shards: ShardSettings,
    },
    /// EXPLAIN (ANALYZE, BUFFERS) every hot query on every shard and print the plans.
    Explain {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        shards: ShardSettings,
    },
    /// Import orders from a JSON Lines file (PlaceOrder's input plus an optional `order_ref`
    /// per line) through an ImportOrders workflow, showing its progress. Exits 1 if any line
    /// was rejected; the report lists each with its line number and reason.
    Import {
        file: PathBuf,
        /// Orders per COPY chunk and savepoint.
        #[arg(long, default_value_t = orders_workflows::import_orders::DEFAULT_CHUNK_SIZE)]
        chunk_size: u32,
        /// Start the import and return; `orders import-status ID` follows it.
        #[arg(long)]
        detach: bool,
        /// Workflow id (default: import-<uuid>).
        #[arg(long)]
        workflow_id: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        temporal: TemporalSettings,
    },
    /// Show an import's progress, and its report once it is done.
    ImportStatus {
        workflow_id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        temporal: TemporalSettings,
    },
    /// Show an order and its items, found by id alone.
    Get {
        order_id: i64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        shards: ShardSettings,
    },
    /// Manage products and their stock (kept on the shard that owns each product id).
    Product {
        #[command(subcommand)]
        command: ProductCommand,
        #[command(flatten)]
        shards: ShardSettings,
    },
    /// Cancel an order: a pending one through its PlaceOrder workflow (compensations or
    /// two-phase rollback run), a confirmed one through its lifecycle (credit and stock
    /// are returned).
    Cancel {
        order_id: i64,
        #[command(flatten)]
        temporal: TemporalSettings,
    },
    /// Resolve our prepared transactions left in doubt on every shard, from each one's
    /// workflow: commit if it decided commit, roll back if it ended without committing.
    /// Exits 1 if something could not be resolved.
    Recover {
        /// Seconds a prepared transaction of a workflow Temporal does not know is left alone.
        #[arg(long = "grace", default_value_t = 300)]
        grace_secs: u64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        temporal: TemporalSettings,
        #[command(flatten)]
        shards: ShardSettings,
    },
    /// Check the invariants across every shard (items, totals, credit, stock, prepared
    /// transactions); exits 1 with a list of every violation. Run it when no order is in flight.
    Audit {
        /// Prepared transactions older than this many seconds count as violations.
        #[arg(long = "grace", default_value_t = 300)]
        grace_secs: u64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        shards: ShardSettings,
    },
    /// Place many orders at once (from a pool of customers and products it creates) and
    /// report orders/s, p50/p95/p99 latency and failures by reason.
    Load {
        #[arg(long, default_value_t = 200)]
        orders: u64,
        /// Orders in flight at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, default_value = "saga", value_parser = ["saga", "two_phase"])]
        consistency: String,
        /// Customers in the pool.
        #[arg(long, default_value_t = 50)]
        customers: usize,
        /// Products in the pool; fewer products mean more contention on their stock rows.
        #[arg(long, default_value_t = 20)]
        products: usize,
        /// Stock each pool product starts with.
        #[arg(long, default_value_t = 1_000_000)]
        stock: i32,
        /// Seed of the pseudo-random orders (default: from the clock).
        #[arg(long)]
        seed: Option<u64>,
        /// Print the report, with every order's outcome, as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        temporal: TemporalSettings,
        #[command(flatten)]
        shards: ShardSettings,
    },
}

#[derive(Subcommand)]
enum ProductCommand {
    /// Create a product or set its stock on hand.
    Add {
        #[arg(long)]
        id: i64,
        #[arg(long)]
        stock: i32,
        #[arg(long)]
        name: Option<String>,
    },
    /// Show a product's stock: on hand, reserved, available.
    Get {
        id: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum MigratePlan {
    /// Apply pending migrations (all, or the next N).
    Up { steps: Option<u32> },
    /// Roll back the last N migrations (default 1).
    Down { steps: Option<u32> },
    /// Print each shard's version.
    Status,
}

#[derive(Subcommand)]
enum ShardsCommand {
    /// Show which buckets growing the shard map to N shards would move (changes nothing).
    Plan {
        #[arg(long)]
        to: usize,
    },
}

#[derive(Subcommand)]
enum CustomerCommand {
    /// Change a customer's name or email, and the copies on their orders, atomically.
    Update {
        id: i64,
        /// Full name; split at the first space into first and last name.
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        email: Option<String>,
        #[command(flatten)]
        shards: ShardSettings,
    },
    /// Create a customer and print its id.
    Add {
        /// Full name; split at the first space into first and last name.
        #[arg(long)]
        name: String,
        #[arg(long)]
        email: String,
        #[arg(long)]
        credit_limit: Decimal,
        /// Use this id instead of allocating one.
        #[arg(long)]
        id: Option<i64>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        shards: ShardSettings,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Command::Dev {
            state_dir,
            temporal,
            metrics,
            api,
        } => {
            let serving = worker::Serving {
                metrics_addr: metrics.socket_addr()?,
                api_addr: api.socket_addr()?,
                cache: api.cache(),
                map_refresh: std::time::Duration::from_secs(30),
                recovery: Default::default(),
            };
            dev::run(state_dir, temporal, serving).await
        }
        Command::Worker {
            temporal,
            shards,
            metrics,
            api,
            recovery,
        } => {
            let client = client::connect(&temporal).await?;
            let serving = worker::Serving {
                metrics_addr: metrics.socket_addr()?,
                api_addr: api.socket_addr()?,
                cache: api.cache(),
                map_refresh: shards.map_refresh(),
                recovery: recovery.schedule(),
            };
            let shards = shards.connect().await?;
            worker::run(
                client,
                &temporal.task_queue,
                shards,
                serving,
                worker::shutdown_signal(),
            )
            .await
        }
        Command::Migrate { plan, shards, json } => {
            let plan = match plan {
                MigratePlan::Up { steps } => migrate::Plan::Up(steps),
                MigratePlan::Down { steps } => migrate::Plan::Down(steps.unwrap_or(1)),
                MigratePlan::Status => migrate::Plan::Status,
            };
            let shards = shards.connect_without_map().await?;
            let versions = migrate::run(&shards, plan).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&versions)?);
            } else {
                for v in versions {
                    println!(
                        "shard {} {}: {} ({} applied, {} pending)",
                        v.shard,
                        v.url,
                        v.version.as_deref().unwrap_or("(empty)"),
                        v.applied,
                        v.pending
                    );
                }
            }
            Ok(())
        }
        Command::Customer {
            command:
                CustomerCommand::Add {
                    name,
                    email,
                    credit_limit,
                    id,
                    json,
                    shards,
                },
        } => {
            let shards = shards.connect().await?;
            let (first_name, last_name) = NewCustomer::split_name(&name);
            let customer = customers::add(
                &shards,
                NewCustomer {
                    id,
                    first_name,
                    last_name,
                    email,
                    credit_limit,
                },
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&customer)?);
            } else {
                println!("{}", customer.id);
            }
            Ok(())
        }
        Command::Customer {
            command:
                CustomerCommand::Update {
                    id,
                    name,
                    email,
                    shards,
                },
        } => {
            let shards = shards.connect().await?;
            let customer =
                customers::update(&shards, id, name.as_deref(), email.as_deref()).await?;
            println!(
                "customer {} is now {} {} <{}>; their orders carry the same",
                customer.id, customer.first_name, customer.last_name, customer.email
            );
            Ok(())
        }
        Command::Shards {
            command,
            json,
            shards: settings,
        } => {
            let shards = settings.connect_without_map().await?;
            if let Err(e) = shards.refresh_map().await {
                tracing::warn!(error = %e, "showing the initial shard map");
            }
            match command {
                Some(ShardsCommand::Plan { to }) => {
                    let plan = shard_report::growth_plan(&shards.map(), to)?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&plan)?);
                    } else {
                        shard_report::print_plan(&plan);
                    }
                    Ok(())
                }
                None => {
                    let reports = shard_report::report(&shards, settings.pool_size).await;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&reports)?);
                    } else {
                        shard_report::print_reports(shards.map().version(), &reports);
                    }
                    if reports.iter().any(|r| !r.reachable) {
                        std::process::exit(1);
                    }
                    Ok(())
                }
            }
        }
        Command::List {
            customer,
            limit,
            cursor,
            offset,
            json,
            shards,
        } => {
            let shards = shards.connect().await?;
            let page = match (customer, offset) {
                (Some(customer), _) => {
                    cross_shard::customer_orders_page(&shards, customer, cursor.as_deref(), limit)
                        .await?
                }
                (None, Some(offset)) => cross_shard::OrderPage {
                    orders: cross_shard::orders_page_at_offset(&shards, offset, limit).await?,
                    next_cursor: None,
                },
                (None, None) => cross_shard::orders_page(&shards, cursor.as_deref(), limit).await?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&page)?);
                return Ok(());
            }
            for listed in &page.orders {
                let o = &listed.order;
                println!(
                    "{:>12}  shard {}  {}  customer {} ({})  {:<9}  {:>10}",
                    o.id,
                    listed.shard,
                    o.created_at.format("%Y-%m-%d %H:%M:%S%.3f"),
                    o.customer_id,
                    o.customer_name.as_deref().unwrap_or("?"),
                    o.status.to_value(),
                    o.total_amount
                );
            }
            match &page.next_cursor {
                Some(next) => println!("next page: --cursor {next}"),
                None => println!("(last page)"),
            }
            Ok(())
        }
        Command::Counts { json, shards } => {
            let shards = shards.connect().await?;
            let counts = cross_shard::count_by_status(&shards).await;
            if json {
                println!("{}", serde_json::to_string_pretty(&counts)?);
            } else {
                for (status, n) in &counts.by_status {
                    println!("{status:<10} {n:>10}");
                }
                println!("{:<10} {:>10}", "total", counts.total);
            }
            if !counts.is_complete() {
                for missing in &counts.missing_shards {
                    eprintln!("missing shard {}: {}", missing.shard, missing.error);
                }
                anyhow::bail!(
                    "counts are incomplete: {} of {} shards did not answer (their orders are not included)",
                    counts.missing_shards.len(),
                    shards.len()
                );
            }
            Ok(())
        }
        Command::Fill {
            customers_per_shard,
            orders_per_shard,
            shards,
        } => {
            anyhow::ensure!(
                customers_per_shard > 0,
                "--customers-per-shard must be at least 1"
            );
            let shards = shards.connect().await?;
            let started = std::time::Instant::now();
            synthetic::fill(
                &shards,
                synthetic::Volume {
                    customers_per_shard,
                    orders_per_shard,
                },
            )
            .await?;
            println!(
                "made {customers_per_shard} customers and {orders_per_shard} orders (2 items each) on each of {} shards in {:.1?}",
                shards.len(),
                started.elapsed()
            );
            Ok(())
        }
        Command::Explain { json, shards } => {
            let shards = shards.connect().await?;
            let plans = explain::explain_all(&shards).await;
            if json {
                println!("{}", serde_json::to_string_pretty(&plans)?);
            } else {
                explain::print(&plans);
            }
            if let Some(failed) = plans.iter().find(|p| p.error.is_some()) {
                anyhow::bail!("{}", failed.error.as_deref().unwrap_or_default());
            }
            Ok(())
        }
        Command::Import {
            file,
            chunk_size,
            detach,
            workflow_id,
            json,
            temporal,
        } => {
            let max = orders_workflows::import_orders::MAX_CHUNK_SIZE;
            anyhow::ensure!(
                (1..=max).contains(&chunk_size),
                "--chunk-size must be between 1 and {max}"
            );
            let client = client::connect(&temporal).await?;
            let workflow_id =
                workflow_id.unwrap_or_else(|| format!("import-{}", uuid::Uuid::new_v4()));
            import::start(
                &client,
                &temporal.task_queue,
                &workflow_id,
                &file,
                chunk_size,
            )
            .await?;
            if detach {
                println!("{workflow_id}");
                eprintln!("import started; follow it with: orders import-status {workflow_id}");
                return Ok(());
            }
            eprintln!("importing {} as {workflow_id}", file.display());
            let report = if json {
                import::report(&client, &workflow_id).await?
            } else {
                import::watch(&client, &workflow_id).await?
            };
            finish_import(&report, json)
        }
        Command::ImportStatus {
            workflow_id,
            json,
            temporal,
        } => {
            let client = client::connect(&temporal).await?;
            let progress = import::progress(&client, &workflow_id).await?;
            if !progress.done {
                if json {
                    println!("{}", serde_json::to_string_pretty(&progress)?);
                } else {
                    println!(
                        "{}",
                        import::progress_line(&progress, std::time::Duration::ZERO)
                    );
                }
                return Ok(());
            }
            let report = import::report(&client, &workflow_id).await?;
            finish_import(&report, json)
        }
        Command::Submit {
            customer,
            items,
            notes,
            consistency,
            workflow_id,
            wait,
            json,
            temporal,
        } => {
            let mut input = order_input(customer, &items, notes)?;
            input["consistency"] = consistency.into();
            let client = client::connect(&temporal).await?;
            let workflow_id =
                workflow_id.unwrap_or_else(|| format!("place-order-{}", uuid::Uuid::new_v4()));
            let acceptance =
                client::submit_order(&client, &temporal.task_queue, &workflow_id, input).await?;
            if json && (!wait || !acceptance.accepted) {
                let mut value = serde_json::to_value(&acceptance)?;
                value["workflow_id"] = workflow_id.clone().into();
                println!("{}", serde_json::to_string_pretty(&value)?);
            }
            if !acceptance.accepted {
                if !json {
                    eprintln!(
                        "order refused: {} ({workflow_id})",
                        acceptance.failure.as_deref().unwrap_or("no reason given")
                    );
                }
                std::process::exit(1);
            }
            if !wait {
                if !json {
                    println!(
                        "order {} accepted on shard {} ({workflow_id}); payment and confirmation continue in the workflow",
                        acceptance.order_id.unwrap_or_default(),
                        acceptance.shard.unwrap_or_default()
                    );
                }
                return Ok(());
            }
            let outcome = client::order_outcome(&client, &workflow_id).await?;
            print_outcome(&workflow_id, &outcome, json)?;
            if !matches!(outcome, OrderOutcome::Placed(_)) {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::SetStatus {
            order_id,
            status,
            json,
            temporal,
        } => {
            let status = serde_json::from_value(serde_json::Value::String(status))?;
            let client = client::connect(&temporal).await?;
            let order = client::set_order_status(&client, order_id, status).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&order)?);
            } else {
                println!(
                    "order {} is now {}",
                    order.order_id,
                    order.status.to_value()
                );
            }
            Ok(())
        }
        Command::Replay { paths } => {
            let files = orders_worker::replay::history_files(&paths)?;
            let results = orders_worker::replay::replay_files(
                &files,
                orders_worker::replay::worker_workflows()?,
            )
            .await?;
            let mut failed = 0;
            for result in &results {
                match &result.failure {
                    None => println!("ok    {}", result.path.display()),
                    Some(failure) => {
                        failed += 1;
                        println!("FAIL  {}: {failure}", result.path.display());
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!(
                    "{failed} of {} histories no longer replay: the workflow change is not deterministic (guard it with ctx.patched, see README)",
                    results.len()
                );
            }
            println!("{} histories replay cleanly", results.len());
            Ok(())
        }
        Command::Product { command, shards } => {
            let shards = shards.connect().await?;
            match command {
                ProductCommand::Add { id, stock, name } => {
                    let stock = products::add(&shards, id, name.as_deref(), stock).await?;
                    println!(
                        "product {} has {} on hand, {} reserved (shard {})",
                        stock.product_id,
                        stock.on_hand,
                        stock.reserved,
                        shards.for_product(id).index
                    );
                }
                ProductCommand::Get { id, json } => {
                    let Some(stock) = products::get(&shards, id).await? else {
                        anyhow::bail!(
                            "product {id} does not exist (add it with `orders product add --id {id} --stock N`)"
                        );
                    };
                    if json {
                        let mut value = serde_json::to_value(&stock)?;
                        value["available"] = stock.available().into();
                        value["shard"] = shards.for_product(id).index.into();
                        println!("{}", serde_json::to_string_pretty(&value)?);
                    } else {
                        println!(
                            "product {} ({}): {} on hand, {} reserved, {} available (shard {})",
                            stock.product_id,
                            stock.name.as_deref().unwrap_or("unnamed"),
                            stock.on_hand,
                            stock.reserved,
                            stock.available(),
                            shards.for_product(id).index
                        );
                    }
                }
            }
            Ok(())
        }
        Command::Cancel { order_id, temporal } => {
            let client = client::connect(&temporal).await?;
            match client::cancel_order(&client, order_id).await? {
                client::CancelOutcome::CancelledWhilePending { workflow_id } => println!(
                    "order {order_id} cancelled while pending ({workflow_id}); what it wrote was undone"
                ),
                client::CancelOutcome::CancelledAfterConfirmation(order) => println!(
                    "order {} cancelled; credit and stock returned",
                    order.order_id
                ),
            }
            Ok(())
        }
        Command::Recover {
            grace_secs,
            json,
            temporal,
            shards,
        } => {
            let client = client::connect(&temporal).await?;
            let shards = shards.connect().await?;
            let grace = std::time::Duration::from_secs(grace_secs);
            let report = orders_activities::recovery::recover(&shards, &client, grace).await;
            finish_report(&report, json, print_recovery, !report.errors.is_empty())
        }
        Command::Audit {
            grace_secs,
            json,
            shards,
        } => {
            let shards = shards.connect().await?;
            let report = audit::run(&shards, std::time::Duration::from_secs(grace_secs)).await?;
            finish_report(&report, json, audit::print, !report.violations.is_empty())
        }
        Command::Load {
            orders,
            concurrency,
            consistency,
            customers,
            products,
            stock,
            seed,
            json,
            temporal,
            shards,
        } => {
            let client = client::connect(&temporal).await?;
            let shards = shards.connect().await?;
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
            let plan = load::LoadPlan {
                orders,
                concurrency,
                consistency,
                customers,
                products,
                stock,
                seed,
                run_id: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
            };
            let report = load::run(&client, &temporal.task_queue, &shards, &plan, !json).await?;
            finish_report(&report, json, load::print, false)
        }
        Command::Get {
            order_id,
            json,
            shards,
        } => {
            let shards = shards.connect().await?;
            let Some((shard, order)) =
                orders_activities::lookup::find_order(&shards, order_id).await?
            else {
                anyhow::bail!(
                    "order {order_id} does not exist on any of the {} shards",
                    shards.len()
                );
            };
            if json {
                let mut value = serde_json::to_value(&order)?;
                value["shard"] = shard.into();
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!("order {} (shard {shard})", order.id);
                println!(
                    "  customer {}  status {}  total {}",
                    order.customer_id,
                    order.status.to_value(),
                    order.total_amount
                );
                if let Some(notes) = &order.notes {
                    println!("  notes    {notes}");
                }
                println!(
                    "  created  {}  updated {}",
                    order.created_at, order.updated_at
                );
                for item in &order.items {
                    println!(
                        "  - product {} × {} @ {}",
                        item.product_id, item.quantity, item.price
                    );
                }
            }
            Ok(())
        }
    }
}

/// Prints an import's report; exits 1 if any line was rejected.
fn finish_import(
    report: &orders_workflows::import_orders::ImportReport,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        import::print_report(report);
    }
    if report.progress.rejected > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// Builds PlaceOrder's documented JSON input from `PRODUCT:QTY:PRICE` strings. Validation
/// itself happens in the workflow, so every client gets the same rules.
fn order_input(
    customer: i64,
    items: &[String],
    notes: Option<String>,
) -> anyhow::Result<serde_json::Value> {
    let items = items
        .iter()
        .map(|item| {
            let parts: Vec<&str> = item.split(':').collect();
            let [product, quantity, price] = parts.as_slice() else {
                anyhow::bail!("--item {item:?} must look like PRODUCT:QUANTITY:UNIT_PRICE, e.g. 7:2:19.99");
            };
            Ok(serde_json::json!({
                "product_id": product.parse::<i64>().with_context(|| format!("product id in --item {item:?}"))?,
                "quantity": quantity.parse::<i64>().with_context(|| format!("quantity in --item {item:?}"))?,
                "unit_price": price,
            }))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut input = serde_json::json!({"customer_id": customer, "items": items});
    if let Some(notes) = notes {
        input["notes"] = notes.into();
    }
    Ok(input)
}

/// Prints `report` as JSON or for people, then exits 1 if it `failed`.
fn finish_report<T: serde::Serialize>(
    report: &T,
    json: bool,
    print: impl Fn(&T),
    failed: bool,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print(report);
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

fn print_recovery(report: &orders_activities::recovery::RecoveryReport) {
    use orders_activities::recovery::Action;
    println!(
        "in-doubt recovery: {} committed, {} rolled back, {} left, {} foreign left alone",
        report.count(Action::Committed),
        report.count(Action::RolledBack),
        report.count(Action::Left),
        report.foreign
    );
    for r in &report.resolutions {
        println!(
            "  shard {} {:?} {} ({} s old): {}",
            r.shard, r.action, r.gid, r.age_secs, r.reason
        );
    }
    for e in &report.errors {
        eprintln!("  error: {e}");
    }
}

fn print_outcome(workflow_id: &str, outcome: &OrderOutcome, json: bool) -> anyhow::Result<()> {
    if json {
        let value = match outcome {
            OrderOutcome::Placed(placed) => serde_json::to_value(placed)?,
            OrderOutcome::Failed {
                failure_type,
                message,
            } => {
                serde_json::json!({"workflow_id": workflow_id, "failure_type": failure_type, "message": message})
            }
            OrderOutcome::Cancelled => {
                serde_json::json!({"workflow_id": workflow_id, "cancelled": true})
            }
            OrderOutcome::Other(message) => {
                serde_json::json!({"workflow_id": workflow_id, "message": message})
            }
        };
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    match outcome {
        OrderOutcome::Placed(p) => println!(
            "order {} confirmed ({}) on shard {} for customer {}, total {} ({workflow_id})",
            p.order_id,
            p.consistency.as_str(),
            p.shard,
            p.customer_id,
            p.total_amount
        ),
        OrderOutcome::Failed {
            failure_type,
            message,
        } => {
            eprintln!("order failed: {failure_type}: {message} ({workflow_id})")
        }
        OrderOutcome::Cancelled => eprintln!("order cancelled ({workflow_id})"),
        OrderOutcome::Other(message) => {
            eprintln!("order did not complete: {message} ({workflow_id})")
        }
    }
    Ok(())
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ORDERS_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,sqlx=warn,sea_orm_migration=warn,temporalio_sdk_core=warn",
        )
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn every_subcommand_parses_without_clashing_flags() {
        super::Cli::command().debug_assert();
    }
}
