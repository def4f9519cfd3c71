//! Which files an import may read: regular files of at most `ORDERS_IMPORT_MAX_BYTES` inside
//! the directory the operator allowed, `ORDERS_IMPORT_DIR`.
//!
//! The path comes from the `ImportOrders` input, so from any client of the namespace. Without
//! these rules a client could have the worker hash `/dev/zero` for ever, or read any file the
//! worker can open. The directory and the path are both canonicalised before comparing, so
//! neither `..` nor a symlink leads out of it; relative paths are taken from the directory.
//! The file is checked once open (same inode as the path checked, regular, small enough), so
//! swapping it after the check gains nothing. No refusal quotes the file's contents, nor where
//! a symlink points.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The variable naming the directory imports may read from.
pub const DIR_VAR: &str = "ORDERS_IMPORT_DIR";
/// The variable capping an import file's size, in bytes.
pub const MAX_BYTES_VAR: &str = "ORDERS_IMPORT_MAX_BYTES";
/// 8 GiB: about 50 million order lines; hashing it takes a minute or two.
pub const DEFAULT_MAX_BYTES: u64 = 8 << 30;

/// Where imports may read from, as the operator configured it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportPolicy {
    /// Regular files of at most `max_bytes` under `dir`.
    Allowed { dir: PathBuf, max_bytes: u64 },
    /// Every import is refused, for this reason (which says what to set).
    Refused(String),
}

/// Why an import's file was refused. Each says which rule, never what the file holds.
#[derive(Debug, thiserror::Error)]
pub enum PathRefused {
    /// The operator has not allowed imports (or configured them wrongly).
    #[error("{0}")]
    NotAllowed(String),
    /// `ORDERS_IMPORT_DIR` names nothing usable on this worker.
    #[error(
        "{DIR_VAR} ({dir}) cannot be used on this worker: {error}; point it at an existing directory"
    )]
    DirUnusable { dir: String, error: std::io::Error },
    #[error(
        "it does not exist on the worker's machine (relative paths are taken from {DIR_VAR}, {dir})"
    )]
    Missing { dir: String },
    /// The path resolves (through `..` or symlinks) to somewhere outside the directory.
    #[error(
        "it is outside {DIR_VAR} ({dir}) once symlinks and `..` are resolved; put the file in that directory"
    )]
    Outside { dir: String },
    #[error("it is not a regular file (directories, devices, FIFOs and sockets are refused)")]
    NotRegular,
    #[error(
        "it is {bytes} bytes, more than {MAX_BYTES_VAR} ({max}); split it, or raise the limit on the workers"
    )]
    TooLarge { bytes: u64, max: u64 },
    /// The file was replaced between the check and the open.
    #[error("it was replaced while being opened; import it again")]
    Replaced,
    /// The worker could not open or inspect it (permissions, I/O).
    #[error("the worker cannot open it: {0}")]
    Io(#[source] std::io::Error),
}

/// An import file, open and checked against the policy.
#[derive(Debug)]
pub struct CheckedFile {
    pub file: File,
    pub bytes: u64,
}

impl ImportPolicy {
    /// The policy for `dir` (unset: refused) and `max_bytes` (unset: [`DEFAULT_MAX_BYTES`]).
    pub fn from_settings(dir: Option<PathBuf>, max_bytes: Option<&str>) -> Self {
        let Some(dir) = dir.filter(|d| !d.as_os_str().is_empty()) else {
            return Self::Refused(format!(
                "{DIR_VAR} is not set on the worker, so it imports nothing: set it to the directory import files are put in, and restart the worker"
            ));
        };
        let max_bytes = match max_bytes.map(|m| m.trim().parse::<u64>()) {
            None => DEFAULT_MAX_BYTES,
            Some(Ok(max)) if max > 0 => max,
            Some(_) => {
                return Self::Refused(format!(
                    "{MAX_BYTES_VAR} must be a positive whole number of bytes: fix it on the worker, and restart it"
                ));
            }
        };
        Self::Allowed { dir, max_bytes }
    }

    /// Opens `requested` if the policy allows it: the path and the directory canonicalised,
    /// the first inside the second, a regular file of at most `max_bytes`, checked again once
    /// open.
    pub fn open(&self, requested: &str) -> Result<CheckedFile, PathRefused> {
        let (dir, max_bytes) = match self {
            Self::Allowed { dir, max_bytes } => (dir, *max_bytes),
            Self::Refused(reason) => return Err(PathRefused::NotAllowed(reason.clone())),
        };
        let shown = dir.display().to_string();
        let root = dir
            .canonicalize()
            .map_err(|error| PathRefused::DirUnusable {
                dir: shown.clone(),
                error,
            })?;
        let path = root
            .join(requested)
            .canonicalize()
            .map_err(|e| match e.kind() {
                ErrorKind::NotFound => PathRefused::Missing { dir: shown.clone() },
                _ => PathRefused::Io(e),
            })?;
        if !path.starts_with(&root) {
            return Err(PathRefused::Outside { dir: shown });
        }
        let checked = checked_metadata(&path, max_bytes)?;
        let file = File::open(&path).map_err(PathRefused::Io)?;
        let opened = file.metadata().map_err(PathRefused::Io)?;
        if (opened.dev(), opened.ino()) != (checked.dev(), checked.ino()) {
            return Err(PathRefused::Replaced);
        }
        let bytes = regular_size(&opened, max_bytes)?;
        Ok(CheckedFile { file, bytes })
    }
}

/// The metadata of `path` (already canonical), if it is a regular file small enough. Checked
/// before opening, since opening a FIFO blocks until someone writes to it.
fn checked_metadata(path: &Path, max_bytes: u64) -> Result<std::fs::Metadata, PathRefused> {
    let metadata = std::fs::metadata(path).map_err(PathRefused::Io)?;
    regular_size(&metadata, max_bytes)?;
    Ok(metadata)
}

fn regular_size(metadata: &std::fs::Metadata, max_bytes: u64) -> Result<u64, PathRefused> {
    if !metadata.is_file() {
        return Err(PathRefused::NotRegular);
    }
    match metadata.len() {
        bytes if bytes > max_bytes => Err(PathRefused::TooLarge {
            bytes,
            max: max_bytes,
        }),
        bytes => Ok(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fresh directory with an import directory inside it and a file beside that.
    fn setup(name: &str) -> (PathBuf, ImportPolicy) {
        let root =
            std::env::temp_dir().join(format!("import-policy-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("imports")).unwrap();
        std::fs::write(root.join("imports/orders.jsonl"), "{}\n").unwrap();
        std::fs::write(
            root.join("secret.jsonl"),
            "{\"customer_id\": \"TOP-SECRET\"}\n",
        )
        .unwrap();
        let policy = ImportPolicy::from_settings(Some(root.join("imports")), Some("100"));
        (root, policy)
    }

    fn refusal(policy: &ImportPolicy, path: impl AsRef<Path>) -> String {
        let path = path.as_ref().to_str().unwrap();
        let refused = policy.open(path).expect_err(path).to_string();
        assert!(!refused.contains("TOP-SECRET"), "{refused}");
        refused
    }

    #[test]
    fn a_file_in_the_directory_opens_by_absolute_or_relative_path() {
        let (root, policy) = setup("inside");
        assert_eq!(policy.open("orders.jsonl").unwrap().bytes, 3);
        let absolute = root.join("imports/./orders.jsonl");
        assert_eq!(policy.open(absolute.to_str().unwrap()).unwrap().bytes, 3);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn paths_leading_out_of_the_directory_are_refused() {
        let (root, policy) = setup("outside");
        symlink(root.join("secret.jsonl"), root.join("imports/link.jsonl")).unwrap();
        symlink("/dev/zero", root.join("imports/zero.jsonl")).unwrap();
        for path in [
            root.join("secret.jsonl"),
            root.join("imports/../secret.jsonl"),
            PathBuf::from("../secret.jsonl"),
            root.join("imports/link.jsonl"),
            root.join("imports/zero.jsonl"),
            PathBuf::from("/dev/zero"),
        ] {
            let refused = refusal(&policy, &path);
            assert!(
                refused.contains("outside ORDERS_IMPORT_DIR"),
                "{path:?}: {refused}"
            );
            assert!(
                !refused.contains("secret.jsonl"),
                "where a link leads is not shown: {refused}"
            );
        }
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn only_regular_files_up_to_the_size_cap_are_read() {
        let (root, policy) = setup("kinds");
        std::fs::create_dir(root.join("imports/sub")).unwrap();
        std::fs::write(root.join("imports/big.jsonl"), [b'x'; 101]).unwrap();
        assert!(refusal(&policy, "sub").contains("not a regular file"));
        assert!(
            refusal(&policy, "big.jsonl")
                .contains("101 bytes, more than ORDERS_IMPORT_MAX_BYTES (100)")
        );
        assert!(refusal(&policy, "nothing.jsonl").contains("does not exist"));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn without_a_directory_or_with_a_bad_cap_every_import_is_refused_saying_what_to_set() {
        let unset = ImportPolicy::from_settings(None, None);
        assert!(refusal(&unset, "/tmp/x").contains("ORDERS_IMPORT_DIR is not set"));
        let bad_cap = ImportPolicy::from_settings(Some("/tmp".into()), Some("lots"));
        assert!(refusal(&bad_cap, "/tmp/x").contains("ORDERS_IMPORT_MAX_BYTES must be"));
        let missing = ImportPolicy::from_settings(Some("/nonexistent-import-dir".into()), None);
        assert!(refusal(&missing, "x").contains("cannot be used"));
        assert_eq!(
            ImportPolicy::from_settings(Some("/srv/imports".into()), None),
            ImportPolicy::Allowed {
                dir: "/srv/imports".into(),
                max_bytes: DEFAULT_MAX_BYTES
            }
        );
    }
}
