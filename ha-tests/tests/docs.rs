//! The documentation stands on its own (issue 24): every relative link in
//! the README and docs/ leads to a file of this repository, none leads
//! outside it (the README once sent readers to `../shared/ARCHITECTURE.md`,
//! which a clone does not have), and every example configuration that
//! opens an admin port tells the same TLS story as docs/operations.md.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The targets of a Markdown text's inline links, `[text](target)`.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find(')') {
            out.push(rest[..end].to_owned());
        }
    }
    out
}

/// Lexically normalised (no `..`, no `.`), without touching the disk.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn every_relative_link_leads_to_a_file_of_this_repository() -> anyhow::Result<()> {
    let root = root();
    let mut pages = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page)?;
        if text.contains("../shared") {
            broken.push(format!("{} mentions ../shared", page.display()));
        }
        for target in links(&text) {
            let target = target.split('#').next().unwrap_or_default().trim();
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let dir = page.parent().unwrap_or(&root);
            let resolved = normalise(&dir.join(target));
            if !resolved.starts_with(&root) {
                broken.push(format!(
                    "{}: {target} leads outside the repository",
                    page.display()
                ));
            } else if !resolved.exists() {
                broken.push(format!("{}: {target} does not exist", page.display()));
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} links found: is links() right?"
    );
    assert!(broken.is_empty(), "{}", broken.join("\n"));
    Ok(())
}

#[test]
fn every_example_with_an_admin_port_tells_the_tls_story() -> anyhow::Result<()> {
    let root = root();
    let mut configs = Vec::new();
    for dir in ["deploy/examples", "deploy/examples/cluster"] {
        for entry in std::fs::read_dir(root.join(dir))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "toml") {
                configs.push(path);
            }
        }
    }
    let operations = std::fs::read_to_string(root.join("docs/operations.md"))?;
    assert!(
        operations.contains("mutual TLS") && operations.contains("[tls]"),
        "docs/operations.md documents [tls]"
    );
    let mut wrong = Vec::new();
    for config in &configs {
        let text = std::fs::read_to_string(config)?;
        if !text.contains("[admin]") {
            continue;
        }
        // The admin API is unauthenticated only without [tls]: no example
        // may say it has none, full stop.
        let says_tls = text.contains("[tls]") || text.contains("docs/operations.md");
        if !says_tls {
            wrong.push(format!(
                "{} opens an admin port but says nothing of [tls] or docs/operations.md",
                config.display()
            ));
        }
        // Sentence by sentence, the comment marks taken out.
        let prose: String = text
            .lines()
            .map(|l| l.trim_start_matches('#').trim())
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        if prose
            .split(['.', ';'])
            .any(|s| s.contains("no authentication") && !s.contains("without"))
        {
            wrong.push(format!(
                "{} says the admin API has no authentication, without a condition",
                config.display()
            ));
        }
    }
    assert!(!configs.is_empty());
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    Ok(())
}
