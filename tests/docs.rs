//! The docs' claims stay checkable: the README stays a front door, the workbench's key table
//! in `docs/workbench.md` is the one in `src/tui/keys.rs`, every repository path the docs
//! name exists, and every `lors` command and flag they name is one the binary takes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every page under docs/, with their text.
fn pages() -> Vec<(PathBuf, String)> {
    let mut paths = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    paths.extend(docs);
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

/// The text of each `code span` of a page, and each indented code line.
fn code(text: &str) -> Vec<String> {
    let mut spans: Vec<String> = text
        .split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect();
    spans.extend(
        text.lines()
            .filter_map(|l| l.strip_prefix("    "))
            .map(|l| l.trim().to_string()),
    );
    spans
}

#[test]
fn the_readme_is_a_front_door() {
    let size = std::fs::metadata(repo().join("README.md")).unwrap().len();
    assert!(
        size <= 10 * 1024,
        "README.md is {size} bytes; move detail to docs/"
    );
}

/// `docs/workbench.md` holds `keys::markdown()` between its markers; `LORS_UPDATE_DOCS=1`
/// writes it there.
#[test]
fn the_workbench_page_lists_the_key_table() {
    let path = repo().join("docs/workbench.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let (begin, end) = ("<!-- keys:begin -->\n", "<!-- keys:end -->");
    let start = text.find(begin).expect("the begin marker") + begin.len();
    let stop = text.find(end).expect("the end marker");
    let table = lors::tui::keys::markdown();
    if std::env::var_os("LORS_UPDATE_DOCS").is_some() {
        let updated = format!("{}{}{}", &text[..start], table, &text[stop..]);
        std::fs::write(&path, updated).unwrap();
        return;
    }
    assert_eq!(
        text[start..stop],
        table,
        "docs/workbench.md's keys differ from src/tui/keys.rs (LORS_UPDATE_DOCS=1 rewrites them)"
    );
}

/// Folders of the repository whose paths the docs name.
const ROOTS: [&str; 7] = [
    "src/",
    "scripts/",
    "profiles/",
    "assets/",
    "docs/",
    "tests/",
    ".ci/",
];

/// A path named in a code span, without trailing punctuation; `None` for patterns.
fn repo_path(word: &str) -> Option<&str> {
    let word = word.trim_end_matches([',', '.', ':', ';', ')']);
    let pattern = word.contains(['*', '<', '{', '$']);
    (ROOTS.iter().any(|r| word.starts_with(r)) && !pattern).then_some(word)
}

/// Targets of the page's Markdown links that are files of the repository.
fn link_targets(text: &str) -> Vec<&str> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .map(|t| t.split('#').next().unwrap_or(""))
        .filter(|t| !t.is_empty() && !t.contains("://"))
        .collect()
}

#[test]
fn every_path_the_docs_name_exists() {
    let mut missing = Vec::new();
    for (page, text) in pages() {
        for span in code(&text) {
            for word in span.split_whitespace().filter_map(repo_path) {
                if !repo().join(word).exists() {
                    missing.push(format!("{}: `{word}`", page.display()));
                }
            }
        }
        let dir = page.parent().unwrap();
        for target in link_targets(&text) {
            if !dir.join(target).exists() {
                missing.push(format!("{}: link {target}", page.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "named but missing:\n{}",
        missing.join("\n")
    );
}

/// The subcommands and long flags `lors <words> --help` lists.
fn help(words: &[&str]) -> (Vec<String>, Vec<String>) {
    let out = Command::new(env!("CARGO_BIN_EXE_lors"))
        .args(words)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lors {} --help failed",
        words.join(" ")
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut commands = Vec::new();
    let mut in_commands = false;
    for line in text.lines() {
        if line.ends_with(':') && !line.starts_with(' ') {
            in_commands = line == "Commands:";
            continue;
        }
        if in_commands {
            if let Some(name) = line.split_whitespace().next() {
                commands.push(name.to_string());
            }
        }
    }
    let flags = text
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| {
            w.trim_end_matches([',', '.'])
                .split(['=', '[', '<'])
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    (commands, flags)
}

/// A `lors ...` (or `cargo run --release -- ...`) invocation in a code span: its words.
fn invocation(span: &str) -> Option<Vec<&str>> {
    let rest = span
        .strip_prefix("lors ")
        .or_else(|| span.strip_prefix("cargo run --release -- "))?;
    Some(rest.split_whitespace().collect())
}

#[test]
fn every_command_and_flag_the_docs_name_exists() {
    let mut helps: HashMap<Vec<String>, (Vec<String>, Vec<String>)> = HashMap::new();
    let mut unknown = Vec::new();
    for (page, text) in pages() {
        for span in code(&text) {
            let Some(words) = invocation(&span) else {
                continue;
            };
            // The command path: words while each names a subcommand of the one before.
            let mut path: Vec<&str> = Vec::new();
            for w in &words {
                let (commands, _) = helps
                    .entry(path.iter().map(|s| s.to_string()).collect())
                    .or_insert_with(|| help(&path))
                    .clone();
                if commands.is_empty() || w.starts_with('-') || w.starts_with('[') {
                    break;
                }
                if !commands.iter().any(|c| c == w) {
                    unknown.push(format!(
                        "{}: `lors {}`",
                        page.display(),
                        path_with(&path, w)
                    ));
                    break;
                }
                path.push(*w);
            }
            let key: Vec<String> = path.iter().map(|s| s.to_string()).collect();
            let (_, flags) = helps
                .entry(key.clone())
                .or_insert_with(|| help(&path))
                .clone();
            for flag in words.iter().flat_map(|w| flag_names(w)) {
                if !flags.contains(&flag) {
                    unknown.push(format!(
                        "{}: `{flag}` of `lors {}`",
                        page.display(),
                        key.join(" ")
                    ));
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "not taken by the binary:\n{}",
        unknown.join("\n")
    );
}

fn path_with(path: &[&str], w: &str) -> String {
    path.iter()
        .chain(std::iter::once(&w))
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The long flags inside one word of an invocation (`[--limit`, `--type=f16`, `--a|--b`).
fn flag_names(word: &str) -> Vec<String> {
    word.split(['|', '[', ']', '(', ')'])
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| {
            w.split('=')
                .next()
                .unwrap()
                .trim_end_matches([',', '.'])
                .to_string()
        })
        .collect()
}

/// Every page under docs/ is reachable from the README.
#[test]
fn the_readme_leads_to_every_page() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for entry in std::fs::read_dir(repo().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            let name = format!("docs/{}", path.file_name().unwrap().to_string_lossy());
            assert!(readme.contains(&name), "README.md does not lead to {name}");
        }
    }
}
