//! Shard URLs as operators write them: one per shard in `ORDERS_SHARDS`, each either a plain
//! PostgreSQL URL or libpq's multi-host form, `postgres://user@h1:5432,h2:5432/orders`, which
//! names a primary and its standbys (what `pg_autoctl show uri` prints). sqlx parses only
//! single-host URLs, so a multi-host URL becomes one URL per host here, and the shard layer
//! picks the primary among them itself ([`crate::primary`]).

/// The parameters libpq uses to choose among hosts. We choose ourselves, always the primary
/// for writes, so they are dropped rather than passed to sqlx, which would warn about them.
const HOST_SELECTION_PARAMETERS: [&str; 2] = ["target_session_attrs", "load_balance_hosts"];

/// Splits an `ORDERS_SHARDS` value into one URL per shard. A shard starts only at
/// `postgres://` or `postgresql://`, so the commas of a multi-host URL stay inside it.
pub fn split_shard_list(list: &str) -> Vec<String> {
    let mut starts: Vec<usize> = Vec::new();
    for (at, _) in list.match_indices("://") {
        let scheme_start = list[..at]
            .rfind(|c: char| c == ',' || c.is_whitespace())
            .map_or(0, |comma| comma + 1);
        if matches!(&list[scheme_start..at], "postgres" | "postgresql") {
            starts.push(scheme_start);
        }
    }
    if starts.first() != Some(&0) {
        starts.insert(0, 0);
    }
    starts
        .iter()
        .zip(starts.iter().skip(1).chain([&list.len()]))
        .map(|(&start, &end)| {
            list[start..end]
                .trim()
                .trim_end_matches(',')
                .trim()
                .to_owned()
        })
        .filter(|url| !url.is_empty())
        .collect()
}

/// One URL per host of `url`, in the order given (a single-host URL comes back as is, but
/// for the host-selection parameters, which are dropped).
pub fn host_urls(url: &str) -> Vec<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return vec![url.to_owned()];
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (user_info, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let tail = without_host_selection(tail);
    hosts
        .split(',')
        .map(|host| format!("{scheme}://{user_info}{host}{tail}"))
        .collect()
}

/// The `host:port` of each host of `url`, for logs and reports (no credentials).
pub fn host_addresses(url: &str) -> Vec<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let hosts = authority
        .rfind('@')
        .map_or(authority, |at| &authority[at + 1..]);
    hosts.split(',').map(str::to_owned).collect()
}

/// `tail` (path and query of a URL) without the host-selection parameters.
fn without_host_selection(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(key, _)| key);
            !pair.is_empty() && !HOST_SELECTION_PARAMETERS.contains(&key)
        })
        .collect();
    if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_list_splits_only_where_a_url_starts() {
        assert_eq!(
            split_shard_list(
                "postgres://u@127.0.0.1:1,127.0.0.1:2/orders,postgresql://v:p@db/orders?sslmode=require, postgres://w@h/o,"
            ),
            [
                "postgres://u@127.0.0.1:1,127.0.0.1:2/orders",
                "postgresql://v:p@db/orders?sslmode=require",
                "postgres://w@h/o",
            ]
        );
        assert_eq!(split_shard_list("postgres://a/b"), ["postgres://a/b"]);
        // Not a URL at all: kept whole, for the connect to refuse with its own message.
        assert_eq!(split_shard_list("shard-zero"), ["shard-zero"]);
    }

    #[test]
    fn a_multi_host_url_becomes_one_url_per_host_keeping_credentials_and_parameters() {
        assert_eq!(
            host_urls(
                "postgres://ada:s3cret@10.0.0.1:5432,10.0.0.2:5433/orders?target_session_attrs=read-write&sslmode=prefer"
            ),
            [
                "postgres://ada:s3cret@10.0.0.1:5432/orders?sslmode=prefer",
                "postgres://ada:s3cret@10.0.0.2:5433/orders?sslmode=prefer",
            ]
        );
        assert_eq!(
            host_urls("postgres://h1,h2/orders?target_session_attrs=read-write"),
            ["postgres://h1/orders", "postgres://h2/orders"]
        );
        assert_eq!(host_urls("postgres://u@h/o"), ["postgres://u@h/o"]);
        assert_eq!(
            host_addresses("postgres://u:p@h1:1,h2:2/o?x=y"),
            ["h1:1", "h2:2"]
        );
    }
}
