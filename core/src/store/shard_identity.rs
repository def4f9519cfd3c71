//! A shard's recorded identity (table `shard_identity`): the deployment it belongs to and its
//! index in that deployment's `ORDERS_SHARDS`.

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};

/// Who a shard is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardIdentity {
    /// The deployment's id (a UUID, as text), the same on every one of its shards.
    pub deployment: String,
    /// The shard's 0-based position in `ORDERS_SHARDS` when it was first migrated.
    pub index: usize,
}

/// The shard's identity; `None` when none is recorded, including before the migration that
/// creates the table.
pub async fn read(conn: &impl ConnectionTrait) -> Result<Option<ShardIdentity>, DbErr> {
    if !super::table_exists(conn, "shard_identity").await? {
        return Ok(None);
    }
    let row = conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT deployment::text AS deployment, shard_index FROM shard_identity",
        ))
        .await?;
    let Some(row) = row else { return Ok(None) };
    let index: i16 = row.try_get("", "shard_index")?;
    Ok(Some(ShardIdentity {
        deployment: row.try_get("", "deployment")?,
        index: usize::try_from(index)
            .map_err(|_| DbErr::Type(format!("negative shard index {index}")))?,
    }))
}

/// Records `identity` unless the shard already has one, and returns the one it has: a
/// concurrent `orders migrate up` cannot give a shard two identities.
pub async fn record(
    conn: &impl ConnectionTrait,
    identity: &ShardIdentity,
) -> Result<ShardIdentity, DbErr> {
    let index = i16::try_from(identity.index)
        .map_err(|_| DbErr::Type(format!("shard index {} too large", identity.index)))?;
    conn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO shard_identity (deployment, shard_index) VALUES ($1::uuid, $2)
         ON CONFLICT (singleton) DO NOTHING",
        [identity.deployment.clone().into(), index.into()],
    ))
    .await?;
    read(conn)
        .await?
        .ok_or_else(|| DbErr::Custom("shard_identity is empty right after recording it".into()))
}

/// Gives the shard a new deployment id, keeping its index: for a restored copy, which must
/// never be taken for the deployment it was copied from.
pub async fn renew_deployment(conn: &impl ConnectionTrait, deployment: &str) -> Result<(), DbErr> {
    conn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "UPDATE shard_identity SET deployment = $1::uuid",
        [deployment.into()],
    ))
    .await?;
    Ok(())
}
