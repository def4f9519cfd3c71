//! The documentation is checked like code, because a newcomer follows it literally.
//!
//! Every relative link in `README.md` and `docs/**/*.md` must point at a file or folder that
//! exists, and every command in their shell code blocks must be one that works: an `orders`
//! command parses with the real command line (`orders_worker::cli::args::Cli`), a
//! `bash scripts/…` line names a script that exists, and a `cargo bench … --bench NAME` names
//! a benchmark of `tests/Cargo.toml`. `orders …` commands quoted inline in the prose are
//! checked more leniently: they may leave out required arguments or use placeholders, but
//! every subcommand and flag they name must exist.
//!
//! None of this needs a running service.

use std::fs;
use std::path::{Path, PathBuf};

use clap::Parser;
use clap::error::ErrorKind;
use orders_worker::cli::args::Cli;

/// The value a `$VARIABLE` in a documented command stands for while it is parsed.
const PLACEHOLDER: &str = "1";

#[test]
fn every_relative_link_in_the_docs_points_at_something_that_exists() {
    let mut broken = Vec::new();
    for doc in documentation() {
        for link in links_in(&doc) {
            if !doc.folder().join(&link.text).exists() {
                broken.push(format!("{}:{}: {}", doc.name, link.line, link.text));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "{} broken links in the docs:\n  {}",
        broken.len(),
        broken.join("\n  ")
    );
}

#[test]
fn every_command_in_the_docs_code_blocks_works_as_written() {
    let benches = benchmark_names();
    let mut failing = Vec::new();
    for doc in documentation() {
        for command in commands_in_code_blocks(&doc) {
            if let Err(why) = check_command(&command.text, &benches) {
                failing.push(failure_at(&doc.name, command.line, &command.text, &why));
            }
        }
    }
    assert!(
        failing.is_empty(),
        "{} commands in the docs do not work as written:\n{}",
        failing.len(),
        failing.join("\n")
    );
}

#[test]
fn every_orders_command_quoted_in_the_prose_names_real_subcommands_and_flags() {
    let mut failing = Vec::new();
    for doc in documentation() {
        for span in inline_code_in(&doc) {
            if !span.text.starts_with("orders ") {
                continue;
            }
            if let Err(why) = check_orders_mention(&split_shell_words(&span.text)) {
                failing.push(failure_at(&doc.name, span.line, &span.text, &why));
            }
        }
    }
    assert!(
        failing.is_empty(),
        "{} `orders` commands quoted in the docs name things the command line does not have:\n{}",
        failing.len(),
        failing.join("\n")
    );
}

#[test]
fn every_source_path_the_docs_quote_exists() {
    let root = repository_root();
    let mut missing = Vec::new();
    for doc in documentation() {
        for span in inline_code_in(&doc) {
            if looks_like_a_source_path(&span.text) && !root.join(&span.text).exists() {
                missing.push(format!("{}:{}: {}", doc.name, span.line, span.text));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} files or folders the docs name do not exist (paths are from the repository root):\n  {}",
        missing.len(),
        missing.join("\n  ")
    );
}

/// A path into one of the workspace's folders, such as `core/src/store/batch.rs` or
/// `worker/src/cli/`: what a reader opens. Globs and placeholders (`*`, `<name>`, `…`) are
/// patterns, not paths.
fn looks_like_a_source_path(text: &str) -> bool {
    const FOLDERS: [&str; 14] = [
        "activities/",
        "core/",
        "deploy/",
        "dev/",
        "docs/",
        "entities/",
        "migration/",
        "operations/",
        "read/",
        "scripts/",
        "tests/",
        "worker/",
        "workflows/",
        ".ci/",
    ];
    FOLDERS
        .iter()
        .any(|folder| text.starts_with(folder) && text.len() > folder.len())
        && !text.contains(['*', '<', '…', ' ', '{'])
}

/// One failing command, where it is and why, for a test's failure message.
fn failure_at(doc: &str, line: usize, command: &str, why: &str) -> String {
    format!(
        "{doc}:{line}: {command}\n    {}",
        why.replace('\n', "\n    ")
    )
}

#[test]
fn the_shell_splitter_honours_quotes_comments_variables_and_operators() {
    assert_eq!(
        split_shell_words(r#"orders customer add --name "Ada Lovelace" --email 'a@b' # note"#),
        [
            "orders",
            "customer",
            "add",
            "--name",
            "Ada Lovelace",
            "--email",
            "a@b"
        ]
    );
    assert_eq!(
        split_shell_words(r#"orders list --cursor "$CURSOR" --shards ${ORDERS_SHARDS}"#),
        [
            "orders",
            "list",
            "--cursor",
            PLACEHOLDER,
            "--shards",
            PLACEHOLDER
        ]
    );
    assert_eq!(
        split_shell_words("orders replay tests/histories | tee out.txt"),
        ["orders", "replay", "tests/histories"]
    );
    assert_eq!(
        split_shell_words("orders get 'a#b' '$NOT_A_VARIABLE'"),
        ["orders", "get", "a#b", "$NOT_A_VARIABLE"]
    );
}

// ---------------------------------------------------------------------------------------
// What a command must be

/// Checks one command of a shell code block, by the program it runs.
fn check_command(command: &str, benches: &[String]) -> Result<(), String> {
    let words = without_variable_assignments(split_shell_words(command));
    let Some(program) = words.first() else {
        return Ok(());
    };
    match program.as_str() {
        "orders" | "target/debug/orders" | "target/release/orders" => check_orders_command(&words),
        "bash" => check_script(&words),
        "cargo" => check_cargo(&words, benches),
        _ => Ok(()),
    }
}

/// An `orders` command in a code block must parse exactly as written.
fn check_orders_command(words: &[String]) -> Result<(), String> {
    match parse_orders(words) {
        Ok(()) => Ok(()),
        Err((kind, _)) if asks_for_help(kind) => Ok(()),
        Err((_, message)) => Err(message),
    }
}

/// An `orders` command quoted in prose may be a mention (`orders submit`) or use a
/// placeholder (`orders get ID`), but may not name a subcommand or flag that does not exist.
fn check_orders_mention(words: &[String]) -> Result<(), String> {
    match parse_orders(words) {
        Ok(()) => Ok(()),
        Err((kind, _)) if asks_for_help(kind) || is_incomplete_or_placeholder(kind) => Ok(()),
        Err((_, message)) => Err(message),
    }
}

/// Parses `words` (the program first) with the real command line, nothing run.
fn parse_orders(words: &[String]) -> Result<(), (ErrorKind, String)> {
    let args = std::iter::once("orders").chain(words.iter().skip(1).map(String::as_str));
    Cli::try_parse_from(args)
        .map(|_| ())
        .map_err(|e| (e.kind(), first_paragraph(&e.to_string())))
}

fn asks_for_help(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
}

fn is_incomplete_or_placeholder(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::MissingRequiredArgument
            | ErrorKind::MissingSubcommand
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            | ErrorKind::InvalidValue
            | ErrorKind::ValueValidation
    )
}

/// `bash scripts/NAME.sh` must name a script that exists.
fn check_script(words: &[String]) -> Result<(), String> {
    match words.get(1) {
        Some(script) if script.starts_with("scripts/") => {
            if repository_root().join(script).is_file() {
                Ok(())
            } else {
                Err(format!("{script} does not exist"))
            }
        }
        _ => Ok(()),
    }
}

/// `cargo bench … --bench NAME` must name a benchmark of `tests/Cargo.toml`, and
/// `cargo install --path DIR` a folder that exists.
fn check_cargo(words: &[String], benches: &[String]) -> Result<(), String> {
    match words.get(1).map(String::as_str) {
        Some("bench") => match value_of("--bench", words) {
            Some(name) if !benches.contains(&name) => Err(format!(
                "no benchmark `{name}` in tests/Cargo.toml (there are: {})",
                benches.join(", ")
            )),
            _ => Ok(()),
        },
        Some("install") => match value_of("--path", words) {
            Some(path) if !repository_root().join(&path).is_dir() => {
                Err(format!("{path} is not a folder of this repository"))
            }
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

/// The value after `flag`, whether written `--flag VALUE` or `--flag=VALUE`.
fn value_of(flag: &str, words: &[String]) -> Option<String> {
    let with_equals = format!("{flag}=");
    words.iter().enumerate().find_map(|(i, word)| {
        if word == flag {
            words.get(i + 1).cloned()
        } else {
            word.strip_prefix(&with_equals).map(str::to_string)
        }
    })
}

/// The `[[bench]]` names of `tests/Cargo.toml`.
fn benchmark_names() -> Vec<String> {
    let manifest = fs::read_to_string(repository_root().join("tests/Cargo.toml"))
        .expect("tests/Cargo.toml is readable");
    let mut names = Vec::new();
    let mut in_bench = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bench = line == "[[bench]]";
        } else if in_bench && let Some(value) = line.strip_prefix("name") {
            let value = value.trim_start().trim_start_matches('=').trim();
            names.push(value.trim_matches('"').to_string());
        }
    }
    names
}

// ---------------------------------------------------------------------------------------
// Reading the docs

/// A markdown file of the documentation, named relative to the repository root.
struct Doc {
    name: String,
    path: PathBuf,
    text: String,
}

impl Doc {
    /// The folder relative links are resolved against.
    fn folder(&self) -> &Path {
        self.path.parent().expect("a file has a folder")
    }
}

/// A piece of text found on a line of a doc (1-based).
struct Located {
    line: usize,
    text: String,
}

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// `README.md` and every `.md` under `docs/`, in a stable order.
fn documentation() -> Vec<Doc> {
    let root = repository_root();
    let mut paths = vec![root.join("README.md")];
    paths.extend(markdown_files_under(&root.join("docs")));
    paths
        .into_iter()
        .map(|path| Doc {
            name: path
                .strip_prefix(&root)
                .unwrap_or(&path)
                .display()
                .to_string(),
            text: fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display())),
            path,
        })
        .collect()
}

fn markdown_files_under(folder: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            files.extend(markdown_files_under(&path));
        } else if path.extension().is_some_and(|ext| ext == "md") {
            files.push(path);
        }
    }
    files
}

/// A line of a doc, with whether it lies inside a fenced code block and that block's
/// language (the word after the opening fence).
struct Line<'a> {
    number: usize,
    text: &'a str,
    fence: Option<&'a str>,
}

/// Every line that is not a fence marker, with the fenced block it belongs to, if any.
fn lines_of(doc: &Doc) -> Vec<Line<'_>> {
    let mut lines = Vec::new();
    let mut fence: Option<&str> = None;
    for (i, text) in doc.text.lines().enumerate() {
        if let Some(info) = text.trim_start().strip_prefix("```") {
            fence = match fence {
                Some(_) => None,
                None => Some(info.split_whitespace().next().unwrap_or("")),
            };
            continue;
        }
        lines.push(Line {
            number: i + 1,
            text,
            fence,
        });
    }
    lines
}

/// The relative targets of `[text](target)` and `![alt](target)` links outside code, without
/// their `#anchor`.
fn links_in(doc: &Doc) -> Vec<Located> {
    let mut links = Vec::new();
    for line in lines_of(doc).iter().filter(|l| l.fence.is_none()) {
        let prose = without_inline_code(line.text);
        let mut rest = prose.as_str();
        while let Some(start) = rest.find("](") {
            rest = &rest[start + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            let target = rest[..end].split_whitespace().next().unwrap_or("");
            let target = target.trim_start_matches('<').trim_end_matches('>');
            if let Some(path) = relative_path_of(target) {
                links.push(Located {
                    line: line.number,
                    text: path.to_string(),
                });
            }
            rest = &rest[end..];
        }
    }
    links
}

/// The file part of a link target, or `None` for web links, mail links and anchors.
fn relative_path_of(target: &str) -> Option<&str> {
    let external = ["http://", "https://", "mailto:"];
    if target.is_empty() || external.iter().any(|scheme| target.starts_with(scheme)) {
        return None;
    }
    let path = target.split('#').next().unwrap_or("");
    (!path.is_empty()).then_some(path)
}

/// A line with its `inline code` spans removed.
fn without_inline_code(line: &str) -> String {
    line.split('`').step_by(2).collect::<Vec<_>>().join(" ")
}

/// Inline code spans outside fenced blocks; a span may continue onto the next line, never
/// past a blank one.
fn inline_code_in(doc: &Doc) -> Vec<Located> {
    let mut spans = Vec::new();
    let mut open: Option<Located> = None;
    for line in lines_of(doc) {
        if line.fence.is_some() || line.text.trim().is_empty() {
            open = None;
            continue;
        }
        for c in line.text.chars() {
            match (c, open.take()) {
                ('`', Some(span)) => spans.push(span),
                ('`', None) => {
                    open = Some(Located {
                        line: line.number,
                        text: String::new(),
                    })
                }
                (c, Some(mut span)) => {
                    span.text.push(c);
                    open = Some(span);
                }
                (_, None) => {}
            }
        }
        if let Some(span) = open.as_mut() {
            span.text.push(' ');
        }
    }
    for span in &mut spans {
        span.text = span.text.split_whitespace().collect::<Vec<_>>().join(" ");
    }
    spans
}

/// The commands of `sh`, `bash`, `shell` and `console` blocks: one per line, lines ending in
/// `\` joined to the next; in `console` blocks only the lines after a `$ ` prompt.
fn commands_in_code_blocks(doc: &Doc) -> Vec<Located> {
    let mut commands = Vec::new();
    let mut pending: Option<Located> = None;
    for line in lines_of(doc) {
        let Some(language) = line.fence else {
            pending = None;
            continue;
        };
        if !matches!(language, "sh" | "bash" | "shell" | "console") {
            continue;
        }
        let command = match (pending.take(), language) {
            (Some(mut command), _) => {
                command.text.push(' ');
                command.text.push_str(line.text.trim());
                command
            }
            (None, "console") => match line.text.trim_start().strip_prefix("$ ") {
                Some(text) => Located {
                    line: line.number,
                    text: text.trim().to_string(),
                },
                None => continue,
            },
            (None, _) => Located {
                line: line.number,
                text: line.text.trim().to_string(),
            },
        };
        if let Some(head) = command.text.strip_suffix('\\') {
            pending = Some(Located {
                line: command.line,
                text: head.trim_end().to_string(),
            });
        } else if !command.text.is_empty() && !command.text.starts_with('#') {
            commands.push(command);
        }
    }
    commands
}

// ---------------------------------------------------------------------------------------
// A small shell-word splitter

/// The words of the first simple command on `line`, as a POSIX shell would split them:
/// single quotes keep everything, double quotes keep everything but `$VARIABLE`s, which are
/// replaced by [`PLACEHOLDER`]; an unquoted `#` starting a word begins a comment; an unquoted
/// `|`, `;`, `&`, `<` or `>` ends the command.
fn split_shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars().peekable();
    let mut in_double_quotes = false;
    while let Some(c) = chars.next() {
        if in_double_quotes {
            match c {
                '"' => in_double_quotes = false,
                '$' => push_variable(&mut chars, word.get_or_insert_with(String::new)),
                '\\' => {
                    if let Some(next) = chars.next() {
                        word.get_or_insert_with(String::new).push(next);
                    }
                }
                c => word.get_or_insert_with(String::new).push(c),
            }
            continue;
        }
        match c {
            '\'' => {
                let quoted = word.get_or_insert_with(String::new);
                for next in chars.by_ref() {
                    if next == '\'' {
                        break;
                    }
                    quoted.push(next);
                }
            }
            '"' => {
                word.get_or_insert_with(String::new);
                in_double_quotes = true;
            }
            '$' => push_variable(&mut chars, word.get_or_insert_with(String::new)),
            '\\' => {
                if let Some(next) = chars.next() {
                    word.get_or_insert_with(String::new).push(next);
                }
            }
            '#' if word.is_none() => break,
            '|' | ';' | '&' | '<' | '>' => break,
            c if c.is_whitespace() => words.extend(word.take()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

/// After a `$`: a `NAME` or `{NAME}` becomes [`PLACEHOLDER`]; anything else is a plain `$`.
fn push_variable(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, word: &mut String) {
    let braced = chars.peek() == Some(&'{');
    if braced {
        chars.next();
    } else if !chars
        .peek()
        .is_some_and(|c| c.is_ascii_alphabetic() || *c == '_')
    {
        word.push('$');
        return;
    }
    while chars
        .peek()
        .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
    {
        chars.next();
    }
    if braced && chars.peek() == Some(&'}') {
        chars.next();
    }
    word.push_str(PLACEHOLDER);
}

/// The words after any leading `NAME=value` assignments (`ORDERS_SHARDS=… orders shards`).
fn without_variable_assignments(words: Vec<String>) -> Vec<String> {
    let is_assignment = |word: &String| {
        word.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    };
    words.into_iter().skip_while(is_assignment).collect()
}

/// The message of a clap error up to its first blank line (the error, without the usage).
fn first_paragraph(message: &str) -> String {
    message
        .trim()
        .split("\n\n")
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}
