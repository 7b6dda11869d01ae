//! Each crate reads bottom-up: no top-level module of any workspace crate is part of a
//! ring of `crate::` references (issue 19). A module may use the modules below it, never
//! one that (directly or through others) uses it back.
//!
//! The check reads the sources, not the compiler's view: every `crate::name` path in a
//! module's files (a `use crate::…` line, a grouped `use crate::{a, b::c}` or a path in
//! code), comments and the trailing `#[cfg(test)] mod tests` left out (tests may reach
//! anywhere). A name the crate root re-exports (`pub use module::Name`) counts as a use
//! of that module.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn no_crate_has_a_ring_of_modules() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root");
    let mut checked = 0;
    let mut rings = Vec::new();
    for src in crate_sources(root) {
        let graph = module_graph(&src);
        checked += 1;
        if let Some(ring) = find_ring(&graph) {
            rings.push(format!("{}: {}", src.display(), ring.join(" → ")));
        }
    }
    assert!(checked >= 15, "found only {checked} crates under {root:?}");
    assert!(
        rings.is_empty(),
        "modules that use each other in a ring (move what the lower one needs below it):\n{}",
        rings.join("\n")
    );
}

#[test]
fn a_ring_is_found_and_layers_are_not() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let src = dir.path();
    let write = |name: &str, text: &str| fs::write(src.join(name), text).expect("write");
    write("lib.rs", "mod a;\nmod b;\nmod c;\npub use c::Top;\n");
    write(
        "a.rs",
        "// crate::c is only named in a comment\nfn f() {}\n",
    );
    write("b.rs", "use crate::{\n    a::{self, f},\n};\n");
    write(
        "c.rs",
        "pub struct Top;\nfn g() { crate::b::h() }\n#[cfg(test)]\nmod tests {\n    use crate::Top;\n}\n",
    );
    let graph = module_graph(src);
    assert_eq!(graph["b"], BTreeSet::from(["a".to_owned()]));
    assert_eq!(graph["c"], BTreeSet::from(["b".to_owned()]));
    assert_eq!(find_ring(&graph), None);

    // `a` now names the root's re-export of `c`'s `Top`: c → b → a → c.
    write("a.rs", "fn f() -> crate::Top { todo!() }\n");
    let ring = find_ring(&module_graph(src)).expect("a ring");
    assert_eq!(ring.len(), 4, "{ring:?}");
    assert_eq!(ring.first(), ring.last());
    assert_eq!(
        ring.iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([&"a".to_owned(), &"b".to_owned(), &"c".to_owned()])
    );
}

/// The `src/` of every workspace member that has one.
fn crate_sources(root: &Path) -> Vec<PathBuf> {
    let mut sources = Vec::new();
    for group in ["crates", "services", "bench"] {
        let Ok(entries) = fs::read_dir(root.join(group)) else {
            continue;
        };
        for entry in entries.flatten() {
            sources.push(entry.path().join("src"));
        }
    }
    sources.push(root.join("flotilla/src"));
    sources.push(root.join("tests/src"));
    sources.retain(|src| src.is_dir());
    sources.sort();
    sources
}

/// Top-level module → the other top-level modules its files name through `crate::`.
fn module_graph(src: &Path) -> Graph {
    let mut files: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    collect(src, src, &mut files);
    let reexports = root_reexports(src);
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    let mut graph = Graph::new();
    for (module, paths) in &files {
        let mut uses = BTreeSet::new();
        for path in paths {
            let text = fs::read_to_string(path).unwrap_or_default();
            for name in crate_paths(&code_of(&text)) {
                let name = reexports.get(&name).cloned().unwrap_or(name);
                if &name != module && modules.contains(&name) {
                    uses.insert(name);
                }
            }
        }
        graph.insert(module.clone(), uses);
    }
    graph
}

/// Files by top-level module (`a.rs` and everything under `a/`); the crate roots
/// (`lib.rs`, `main.rs`) and `bin/` are not modules of the graph.
fn collect(src: &Path, dir: &Path, files: &mut BTreeMap<String, Vec<PathBuf>>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(relative) = path.strip_prefix(src) else {
            continue;
        };
        let Some(top) = relative.components().next() else {
            continue;
        };
        let top = top.as_os_str().to_string_lossy();
        let module = top.strip_suffix(".rs").unwrap_or(&top).to_owned();
        if matches!(module.as_str(), "lib" | "main" | "bin") {
            continue;
        }
        if path.is_dir() {
            collect(src, &path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.entry(module).or_default().push(path);
        }
    }
}

/// Names the crate root re-exports from a module: `pub use module::{A, b::C as D}` maps
/// `A` and `D` to `module`.
fn root_reexports(src: &Path) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for root in ["lib.rs", "main.rs"] {
        let text = code_of(&fs::read_to_string(src.join(root)).unwrap_or_default());
        for statement in text.split(';') {
            let statement = statement.trim();
            let Some(rest) = statement
                .strip_prefix("pub use ")
                .or_else(|| statement.strip_prefix("pub(crate) use "))
            else {
                continue;
            };
            let rest = rest.trim_start_matches("crate::");
            let Some((module, items)) = rest.split_once("::") else {
                continue;
            };
            for item in items.split([',', '{', '}']) {
                let item = item.trim();
                let exported = item.rsplit(" as ").next().unwrap_or(item);
                let exported = exported.rsplit("::").next().unwrap_or(exported).trim();
                if !exported.is_empty() {
                    names.insert(exported.to_owned(), module.trim().to_owned());
                }
            }
        }
    }
    names
}

/// The source without comments and without the trailing `#[cfg(test)] mod tests`.
fn code_of(text: &str) -> String {
    let mut code = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if trimmed == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod tests"))
        {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        let line = line.split(" // ").next().unwrap_or(line);
        code.push_str(line);
        code.push('\n');
    }
    code
}

/// The first segment of every `crate::` path; for a group `crate::{a::x, b, c::{y, z}}`
/// the first segment of each path in it (`a`, `b`, `c`).
fn crate_paths(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let preceded_by_ident = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        rest = &rest[at + "crate::".len()..];
        if preceded_by_ident {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut at_start = true;
            let mut ident = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                if depth == 1 && (c == ',' || c == '{') {
                    at_start = true;
                    continue;
                }
                if at_start && depth == 1 {
                    if c.is_alphanumeric() || c == '_' {
                        ident.push(c);
                        continue;
                    }
                    if !ident.is_empty() {
                        names.push(std::mem::take(&mut ident));
                        at_start = false;
                    }
                }
            }
            if !ident.is_empty() {
                names.push(ident);
            }
        } else {
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !ident.is_empty() {
                names.push(ident);
            }
        }
    }
    names
}

/// A ring of modules, as the path `a → b → … → a`, if the graph has one.
fn find_ring(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        New,
        OnPath,
        Done,
    }
    fn visit(
        module: &str,
        graph: &Graph,
        state: &mut BTreeMap<String, State>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(module.to_owned(), State::OnPath);
        path.push(module.to_owned());
        for used in graph.get(module).into_iter().flatten() {
            match state.get(used).copied().unwrap_or(State::New) {
                State::OnPath => {
                    let start = path.iter().position(|m| m == used).unwrap_or(0);
                    let mut ring = path[start..].to_vec();
                    ring.push(used.clone());
                    return Some(ring);
                }
                State::New => {
                    if let Some(ring) = visit(used, graph, state, path) {
                        return Some(ring);
                    }
                }
                State::Done => {}
            }
        }
        path.pop();
        state.insert(module.to_owned(), State::Done);
        None
    }
    let mut state = BTreeMap::new();
    for module in graph.keys() {
        if state.get(module).copied().unwrap_or(State::New) == State::New
            && let Some(ring) = visit(module, graph, &mut state, &mut Vec::new())
        {
            return Some(ring);
        }
    }
    None
}
