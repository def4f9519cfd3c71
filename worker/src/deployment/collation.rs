//! Every shard must sort text the same way. The bucket mover ranges its chunks and compares
//! its checksums as text, so a shard whose database collates otherwise (created on a host
//! image with another locale) fails every move's verification, or deletes rows copied
//! earlier. The worker checks it before it polls, and `orders migrate up` before it
//! migrates anything.

use futures::future::join_all;
use orders_core::Shards;
use orders_core::store::server::{self, Collation};

use super::Problem;

/// Each answering shard's collation, by position; a shard that does not answer is left out
/// (the other checks, or the migration, name it).
pub async fn read(shards: &Shards) -> Vec<(usize, String, Collation)> {
    join_all(shards.iter().map(|shard| async move {
        match server::collation(&shard.conn).await {
            Ok(collation) => Some((shard.index, shard.url.clone(), collation)),
            Err(e) => {
                tracing::debug!(shard = shard.index, error = %e, "collation not read");
                None
            }
        }
    }))
    .await
    .into_iter()
    .flatten()
    .collect()
}

/// The problem when `collations` are not all the same: every shard with its collation, and
/// how to give the odd ones the collation most shards have (on a tie, shard 0's).
pub fn mismatch(collations: &[(usize, String, Collation)]) -> Option<Problem> {
    let prevailing = collations.iter().map(|(_, _, c)| c).max_by_key(|c| {
        let votes = collations.iter().filter(|(_, _, o)| o == *c).count();
        (votes, std::cmp::Reverse(position(collations, c)))
    })?;
    let odd: Vec<String> = collations
        .iter()
        .filter(|(_, _, c)| c != prevailing)
        .map(|(index, _, _)| index.to_string())
        .collect();
    if odd.is_empty() {
        return None;
    }
    let each: Vec<String> = collations
        .iter()
        .map(|(index, url, c)| format!("shard {index} ({url}): {c}"))
        .collect();
    Some(Problem {
        what: format!(
            "the shards sort text differently, so moving a bucket between them would fail its verification or delete rows copied earlier: {}",
            each.join("; ")
        ),
        fix: format!(
            "give shard {} a database that sorts as the others do (`CREATE DATABASE <name> TEMPLATE template0 {}`), copy its data into it (pg_dump, pg_restore), and point its entry of ORDERS_SHARDS at it",
            odd.join(", "),
            create_options(prevailing)
        ),
    })
}

/// Where `collation` first appears in `collations`.
fn position(collations: &[(usize, String, Collation)], collation: &Collation) -> usize {
    collations
        .iter()
        .position(|(_, _, c)| c == collation)
        .unwrap_or(usize::MAX)
}

/// The `CREATE DATABASE` options that give a database `collation`.
fn create_options(collation: &Collation) -> String {
    let libc = format!(
        "LC_COLLATE '{}' LC_CTYPE '{}'",
        collation.collate, collation.ctype
    );
    match (&*collation.provider, &collation.locale) {
        ("icu", Some(locale)) => format!("LOCALE_PROVIDER icu ICU_LOCALE '{locale}' {libc}"),
        ("builtin", Some(locale)) => {
            format!("LOCALE_PROVIDER builtin BUILTIN_LOCALE '{locale}' {libc}")
        }
        _ => format!("LOCALE_PROVIDER libc {libc}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn libc(name: &str) -> Collation {
        Collation {
            provider: "libc".into(),
            locale: None,
            collate: name.into(),
            ctype: name.into(),
        }
    }

    fn icu(locale: &str) -> Collation {
        Collation {
            provider: "icu".into(),
            locale: Some(locale.into()),
            ..libc("C")
        }
    }

    fn shards(collations: &[Collation]) -> Vec<(usize, String, Collation)> {
        collations
            .iter()
            .enumerate()
            .map(|(i, c)| (i, format!("postgres://h{i}/orders"), c.clone()))
            .collect()
    }

    #[test]
    fn shards_that_all_sort_alike_pass() {
        assert_eq!(mismatch(&shards(&[libc("C"), libc("C"), libc("C")])), None);
        assert_eq!(mismatch(&[]), None);
    }

    #[test]
    fn the_odd_shard_is_told_to_take_the_collation_most_shards_have() {
        let problem = mismatch(&shards(&[icu("en-US"), libc("C"), libc("C")])).unwrap();
        assert!(
            problem.what.contains(
                "shard 0 (postgres://h0/orders): ICU en-US (LC_COLLATE=C LC_CTYPE=C); shard 1 (postgres://h1/orders): LC_COLLATE=C LC_CTYPE=C"
            ),
            "{}",
            problem.what
        );
        assert!(
            problem.fix.starts_with("give shard 0 a database")
                && problem.fix.contains(
                    "TEMPLATE template0 LOCALE_PROVIDER libc LC_COLLATE 'C' LC_CTYPE 'C'"
                ),
            "{}",
            problem.fix
        );
    }

    #[test]
    fn on_a_tie_shard_0s_collation_is_the_one_to_take() {
        let problem = mismatch(&shards(&[icu("en-US"), libc("C.UTF-8")])).unwrap();
        assert!(
            problem.fix.starts_with("give shard 1 a database")
                && problem
                    .fix
                    .contains("LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"),
            "{}",
            problem.fix
        );
    }

    #[test]
    fn a_different_ctype_alone_is_a_mismatch() {
        let other = Collation {
            ctype: "en_US.UTF-8".into(),
            ..libc("C")
        };
        assert!(mismatch(&shards(&[libc("C"), other])).is_some());
    }
}
