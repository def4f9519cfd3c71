//! The command line's shape: every subcommand, flag and environment fallback, and nothing
//! that runs. These names are part of the public contract (docs/contract.md, "Command line").

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use orders_core::{Consistency, RequestedItem};
use orders_entities::order::OrderStatus;
use rust_decimal::Decimal;

use crate::cli::shards::synthetic::Volume;
use crate::config::{
    BackupSettings, ImportSettings, MetricsSettings, ReadApiSettings, RecoverySettings,
    RetentionSettings, ShardSettings, ShutdownSettings, StepSettings, TemporalSettings,
};

/// `orders`: the worker, the local stack and the commands that use them.
#[derive(Debug, Parser)]
#[command(
    name = "orders",
    version,
    about = "Durable order processing on Temporal and sharded PostgreSQL"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        value_enum,
        env = "ORDERS_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    /// Print the command's report as JSON on stdout instead of text for people.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines on stderr are written.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start local Temporal + 4 PostgreSQL shards, the worker and sample orders; Ctrl-C stops.
    #[cfg(feature = "dev")]
    Dev {
        /// Where clusters, Temporal history and logs live.
        #[arg(long, env = "ORDERS_STATE_DIR", default_value = ".orders-dev")]
        state_dir: PathBuf,
        /// Run each shard as a primary and a synchronous standby under pg_auto_failover
        /// (Debian: pg-auto-failover-cli, postgresql-15-auto-failover), given to the worker
        /// as a multi-host URL, so a lost primary is replaced in seconds.
        #[arg(long, env = "ORDERS_DEV_STANDBYS")]
        standbys: bool,
        /// Archive every shard's WAL into a pgBackRest repository in the state directory
        /// (Debian: pgbackrest), so `orders backup`, `backup point` and `restore` work on the
        /// demo. Single clusters only; give it on every run, or the archive has gaps.
        #[arg(long, env = "ORDERS_DEV_BACKUPS")]
        backups: bool,
        #[command(flatten)]
        temporal: TemporalSettings,
        #[command(flatten)]
        metrics: MetricsSettings,
        #[command(flatten)]
        api: ReadApiSettings,
        #[command(flatten)]
        imports: ImportSettings,
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
        #[command(flatten)]
        retention: RetentionSettings,
        #[command(flatten)]
        shutdown: ShutdownSettings,
        #[command(flatten)]
        steps: StepSettings,
        #[command(flatten)]
        imports: ImportSettings,
    },
    /// Apply, roll back or report migrations on every shard.
    Migrate {
        #[command(subcommand)]
        plan: MigratePlan,
        #[command(flatten)]
        shards: ShardSettings,
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
        items: Vec<RequestedItem>,
        #[arg(long)]
        notes: Option<String>,
        /// How the order's shards are kept consistent: saga (compensations) or two_phase
        /// (PREPARE TRANSACTION on every shard, then COMMIT PREPARED).
        #[arg(long, value_enum, default_value_t = Consistency::Saga)]
        consistency: Consistency,
        /// Workflow id (default: place-order-UUID).
        #[arg(long)]
        workflow_id: Option<String>,
        /// Wait for the outcome and print it.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        temporal: TemporalSettings,
    },
    /// Move a confirmed order on: shipped, delivered or cancelled (credit is returned).
    SetStatus {
        order_id: i64,
        #[arg(value_enum)]
        status: NextStatus,
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
        #[command(flatten)]
        shards: ShardSettings,
    },
    /// List orders newest first, from every shard (or one customer's), a page at a time.
    List {
        #[command(flatten)]
        page: PageArgs,
        #[command(flatten)]
        shards: ShardSettings,
    },
    /// Count orders by status across every shard; exits 1 if a shard did not answer.
    Counts {
        #[command(flatten)]
        shards: ShardSettings,
    },
    /// Make synthetic customers and orders on every shard (development and load-test
    /// databases only), e.g. before `orders explain`.
    Fill {
        #[command(flatten)]
        volume: Volume,
        #[command(flatten)]
        shards: ShardSettings,
    },
    /// EXPLAIN (ANALYZE, BUFFERS) every hot query on every shard and print the plans.
    Explain {
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
        /// Workflow id (default: import-UUID).
        #[arg(long)]
        workflow_id: Option<String>,
        #[command(flatten)]
        temporal: TemporalSettings,
    },
    /// Show an import's progress, and its report once it is done.
    ImportStatus {
        workflow_id: String,
        #[command(flatten)]
        temporal: TemporalSettings,
    },
    /// Show an order and its items, found by id alone.
    Get {
        order_id: i64,
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
    /// Move buckets between shards while orders flow, through the Reshard workflow (one at a
    /// time): `--to N` spreads them over the first N configured shards (growing onto a new
    /// one, or draining the last ones), `--move-bucket B --to S` moves one bucket. Follows
    /// the move with a progress line; `status` and `cancel` act on the running one.
    Reshard {
        #[command(subcommand)]
        command: Option<ReshardCommand>,
        /// Shard count to spread the buckets over, or with --move-bucket the shard to move to.
        #[arg(long)]
        to: Option<usize>,
        /// Move only this bucket (0..1023).
        #[arg(long)]
        move_bucket: Option<u16>,
        /// Rows per COPY chunk (and per heartbeat).
        #[arg(long, default_value_t = orders_workflows::reshard::DEFAULT_CHUNK_ROWS)]
        chunk_rows: u32,
        /// Buckets moved together (copied, frozen and cut over as one).
        #[arg(long, default_value_t = orders_workflows::reshard::DEFAULT_BUCKETS_PER_MOVE)]
        buckets_per_move: usize,
        /// Seconds after the last cut-over before the old copies are deleted: at least twice
        /// the workers' ORDERS_SHARD_MAP_REFRESH_SECS, so every worker has read the new map.
        #[arg(long, default_value_t = 70)]
        clean_up_after: u64,
        /// Start the move and return; `orders reshard status` follows it.
        #[arg(long)]
        detach: bool,
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
        #[command(flatten)]
        temporal: TemporalSettings,
        #[command(flatten)]
        shards: ShardSettings,
    },
    /// Back up every shard with pgBackRest (full, or --incremental); `list` shows the backups
    /// and restore points, `point NAME` takes a restore point no order straddles.
    Backup {
        #[command(subcommand)]
        command: Option<BackupCommand>,
        /// Only what changed since the shard's last backup.
        #[arg(long)]
        incremental: bool,
        #[command(flatten)]
        repository: BackupSettings,
        #[command(flatten)]
        shards: ShardSettings,
    },
    /// Restore every shard to a restore point into new local clusters (never over the live
    /// ones), settle what the point caught mid-way, give them a deployment id of their own,
    /// and audit them; they keep running after the command. Exits 1 if the audit finds a
    /// violation.
    Restore {
        /// The point's name, as `orders backup point` took it.
        #[arg(long)]
        point: String,
        /// A new directory: shard i goes to `<into>/shard-<i>`.
        #[arg(long)]
        into: PathBuf,
        /// Shard i listens on 127.0.0.1, port FIRST_PORT + i.
        #[arg(long, default_value_t = 56432)]
        first_port: u16,
        #[command(flatten)]
        repository: BackupSettings,
        /// The live deployment's shards, read (if they answer) for where the point lies on
        /// each, so each restores from the newest backup that reaches it.
        #[command(flatten)]
        shards: ShardSettings,
    },
    /// Check the invariants across every shard (items, totals, credit, stock, prepared
    /// transactions); exits 1 with a list of every violation. Run it when no order is in flight.
    Audit {
        /// Prepared transactions older than this many seconds count as violations.
        #[arg(long = "grace", default_value_t = 300)]
        grace_secs: u64,
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
        #[arg(long, value_enum, default_value_t = Consistency::Saga)]
        consistency: Consistency,
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
        #[command(flatten)]
        temporal: TemporalSettings,
        #[command(flatten)]
        shards: ShardSettings,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProductCommand {
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
    Get { id: i64 },
}

#[derive(Debug, Subcommand)]
pub enum MigratePlan {
    /// Apply pending migrations (all, or the next N).
    Up { steps: Option<u32> },
    /// Roll back the last N migrations (default 1).
    Down { steps: Option<u32> },
    /// Print each shard's version.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum ReshardCommand {
    /// Show the running (or last) reshard's phase, buckets moved and write pauses.
    Status,
    /// Stop the running reshard: buckets cut over stay moved, the one in flight stays put.
    Cancel,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Each shard's backups and WAL archive, and the restore points each backup reaches.
    List,
    /// Take restore point NAME on every shard at one instant: no order step commits on any
    /// shard while it is written. Refused, naming the shard, if a shard does not answer.
    Point { name: String },
}

#[derive(Debug, Subcommand)]
pub enum ShardsCommand {
    /// Show which buckets growing the shard map to N shards would move (changes nothing).
    Plan {
        #[arg(long)]
        to: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum CustomerCommand {
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
        #[command(flatten)]
        shards: ShardSettings,
    },
}

/// Which page `orders list` shows.
#[derive(Debug, clap::Args)]
pub struct PageArgs {
    /// Only this customer's orders (read from their shard alone).
    #[arg(long)]
    pub customer: Option<i64>,
    #[arg(long, default_value_t = 20)]
    pub limit: u64,
    /// The `next_cursor` a previous page printed.
    #[arg(long, conflicts_with = "offset")]
    pub cursor: Option<String>,
    /// OFFSET pagination, as the article does it (slower at depth; for comparison).
    #[arg(long, conflicts_with = "customer")]
    pub offset: Option<u64>,
}

/// Where `orders set-status` may move a confirmed order.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum NextStatus {
    Shipped,
    Delivered,
    Cancelled,
}

impl From<NextStatus> for OrderStatus {
    fn from(status: NextStatus) -> Self {
        match status {
            NextStatus::Shipped => OrderStatus::Shipped,
            NextStatus::Delivered => OrderStatus::Delivered,
            NextStatus::Cancelled => OrderStatus::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Cli, Command};

    #[test]
    fn every_subcommand_parses_without_clashing_flags() {
        Cli::command().debug_assert();
    }

    #[test]
    fn json_is_accepted_after_the_subcommand_and_items_are_typed() {
        let cli = Cli::try_parse_from([
            "orders",
            "submit",
            "--customer",
            "1",
            "--item",
            "7:2:19.99",
            "--consistency",
            "two_phase",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        let Command::Submit {
            items, consistency, ..
        } = cli.command
        else {
            panic!("parsed as submit");
        };
        assert_eq!(items[0].product_id, 7);
        assert_eq!(consistency, orders_core::Consistency::TwoPhase);
    }
}
