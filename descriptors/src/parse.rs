//! Reading a descriptor: a walk over the position-annotated YAML tree that builds the typed
//! [`Descriptor`] and collects every problem on the way, each with its field path and position.
//!
//! JSON descriptors go through the same path (JSON is YAML). This module reads files only to
//! check the addon's own content (exec, flake.nix, Dockerfile); it never writes.

use std::path::{Component, Path, PathBuf};

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

use crate::diagnostic::{Diagnostic, Pos};
use crate::model::{Descriptor, DockerRunner, Meta, NixRunner, Options, RunnerSection, Trigger, TrivialRunner};

/// The result of reading a descriptor: the model (absent when the text is not a descriptor at
/// all) and every problem found.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub descriptor: Option<Descriptor>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Parsed {
    /// True when no error was found (warnings allowed) and a descriptor exists.
    pub fn is_valid(&self) -> bool {
        self.descriptor.is_some() && !self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Parses and validates descriptor text.
///
/// `addon_root` is the unpacked addon, when its files are at hand: then auto-detection (flake.nix,
/// Dockerfile) and the file checks run. Without it the descriptor is judged alone.
pub fn parse_descriptor(text: &str, addon_root: Option<&Path>) -> Parsed {
    let mut w = Walker { src: text, diags: Vec::new() };
    let descriptor = w.document(addon_root);
    let mut diagnostics = w.diags;
    // Reading order, like a compiler; problems without a position (missing keys) last.
    diagnostics.sort_by_key(|d| (d.line.is_none(), d.line, d.column));
    Parsed { descriptor, diagnostics }
}

type Node<'a> = MarkedYaml<'a>;

const ROOT_KEYS: [&str; 5] = ["meta", "triggers", "args", "runner", "options"];
const META_KEYS: [&str; 3] = ["name", "version", "description"];
const RUNNER_KEYS: [&str; 3] = ["nix", "docker", "trivial"];
const NIX_KEYS: [&str; 1] = ["enable"];
const DOCKER_KEYS: [&str; 3] = ["enable", "image", "build"];
const TRIVIAL_KEYS: [&str; 2] = ["enable", "exec"];
const OPTION_KEYS: [&str; 2] = ["networking", "collectOutput"];

struct Walker<'s> {
    src: &'s str,
    diags: Vec<Diagnostic>,
}

/// A mapping's entries with string keys, in document order.
struct Entries<'n, 'a> {
    items: Vec<(String, &'n Node<'a>, &'n Node<'a>)>,
}

impl<'n, 'a> Entries<'n, 'a> {
    fn get(&self, key: &str) -> Option<(&'n Node<'a>, &'n Node<'a>)> {
        self.items.iter().find(|(k, _, _)| k == key).map(|(_, k, v)| (*k, *v))
    }
}

fn pos(node: &Node<'_>) -> Pos {
    // Synthetic nodes (an empty document) carry line 0; clamp to the first line.
    Pos { line: node.span.start.line().max(1), column: node.span.start.col() + 1 }
}

/// Tags (`!!str`) are looked through; the value underneath is what counts.
fn untag<'n, 'a>(node: &'n Node<'a>) -> &'n Node<'a> {
    match &node.data {
        YamlData::Tagged(_, inner) => untag(inner),
        _ => node,
    }
}

fn is_null(node: &Node<'_>) -> bool {
    matches!(untag(node).data, YamlData::Value(Scalar::Null))
}

fn kind_name(node: &Node<'_>) -> &'static str {
    match &untag(node).data {
        YamlData::Value(Scalar::Null) => "nothing (null)",
        YamlData::Value(Scalar::Boolean(_)) => "a boolean",
        YamlData::Value(Scalar::Integer(_)) | YamlData::Value(Scalar::FloatingPoint(_)) => "a number",
        YamlData::Value(Scalar::String(_)) | YamlData::Representation(..) => "a string",
        YamlData::Sequence(_) => "a list",
        YamlData::Mapping(_) => "a mapping",
        YamlData::Alias(_) => "an alias",
        _ => "an unreadable value",
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl<'s> Walker<'s> {
    fn error(&mut self, field: &str, msg: impl Into<String>, at: Option<Pos>) {
        let field = (!field.is_empty()).then(|| field.to_string());
        self.diags.push(Diagnostic::error(field, msg, at));
    }

    fn warning(&mut self, field: &str, msg: impl Into<String>, at: Option<Pos>) {
        let field = (!field.is_empty()).then(|| field.to_string());
        self.diags.push(Diagnostic::warning(field, msg, at));
    }

    /// The source text of a node, for numbers whose YAML value loses digits (`2.10`).
    fn raw(&self, node: &Node<'_>) -> String {
        let (start, end) = (node.span.start.index(), node.span.end.index());
        self.src.chars().skip(start).take(end.saturating_sub(start)).collect::<String>().trim().to_string()
    }

    fn document(&mut self, addon_root: Option<&Path>) -> Option<Descriptor> {
        let docs = match MarkedYaml::load_from_str(self.src) {
            Ok(docs) => docs,
            Err(e) => {
                let m = e.marker();
                let at = Pos { line: m.line().max(1), column: m.col() + 1 };
                self.diags.push(Diagnostic::error(None, format!("YAML syntax error: {}", e.info()), Some(at)));
                return None;
            }
        };
        let Some(root) = docs.first() else {
            self.error("", "the descriptor is empty; it needs at least `meta` and `runner`", None);
            return None;
        };
        if docs.len() > 1 {
            let at = pos(&docs[1]);
            self.error(
                "",
                format!("the descriptor holds {} YAML documents; only one is allowed", docs.len()),
                Some(at),
            );
        }
        let root = untag(root);
        let entries = self.mapping(root, "", "the descriptor")?;
        self.unknown_keys(&entries, "", &ROOT_KEYS);
        let meta = self.meta(&entries);
        let triggers = self.triggers(&entries);
        let args = self.args(&entries);
        let (mut runner, present) = self.runner(&entries);
        let options = self.options(&entries);
        let runner_pos = entries.get("runner").map(|(k, _)| pos(k));
        if let Some(root) = addon_root {
            self.auto_detect(&mut runner, &present, root);
            self.file_checks(&runner, &entries, root);
        }
        let descriptor = Descriptor { meta, triggers, args, runner, options };
        if descriptor.sections().is_empty() {
            let msg = "no runner is enabled; enable one of runner.trivial, runner.docker, runner.nix";
            if addon_root.is_some() {
                self.error("runner", msg, runner_pos);
            } else {
                self.warning(
                    "runner",
                    format!("{msg} (judged without the addon's files: a flake.nix or Dockerfile would enable nix or docker)"),
                    runner_pos,
                );
            }
        }
        Some(descriptor)
    }

    /// The entries of a mapping node, or an error naming what was found instead.
    fn mapping<'n, 'a>(&mut self, node: &'n Node<'a>, field: &str, what: &str) -> Option<Entries<'n, 'a>> {
        let node = untag(node);
        let YamlData::Mapping(map) = &node.data else {
            self.error(
                field,
                format!("{what} must be a mapping (key: value), found {}", kind_name(node)),
                Some(pos(node)),
            );
            return None;
        };
        let mut items = Vec::with_capacity(map.len());
        for (k, v) in map.iter() {
            match &untag(k).data {
                YamlData::Value(Scalar::String(s)) => items.push((s.to_string(), k, v)),
                _ => {
                    let f = field.to_string();
                    self.error(&f, format!("keys must be names, found {}", kind_name(k)), Some(pos(k)));
                }
            }
        }
        Some(Entries { items })
    }

    fn unknown_keys(&mut self, entries: &Entries<'_, '_>, field: &str, known: &[&str]) {
        for (key, knode, _) in &entries.items {
            if !known.contains(&key.as_str()) {
                let suggestion = known
                    .iter()
                    .find(|k| k.eq_ignore_ascii_case(key))
                    .map(|k| format!(" (did you mean `{k}`?)"))
                    .unwrap_or_default();
                self.warning(
                    &join(field, key),
                    format!("unknown key `{key}`{suggestion}, ignored; known keys here: {}", known.join(", ")),
                    Some(pos(knode)),
                );
            }
        }
    }

    /// A required key; reports it missing at the parent's position.
    fn required<'n, 'a>(
        &mut self,
        entries: &Entries<'n, 'a>,
        parent: &str,
        key: &str,
        parent_pos: Option<Pos>,
        what: &str,
    ) -> Option<&'n Node<'a>> {
        match entries.get(key) {
            Some((_, v)) if !is_null(v) => Some(v),
            Some((k, _)) => {
                self.error(&join(parent, key), format!("`{key}` has no value; it must be {what}"), Some(pos(k)));
                None
            }
            None => {
                self.error(&join(parent, key), format!("missing `{key}`: {what}"), parent_pos);
                None
            }
        }
    }

    fn string(&mut self, node: &Node<'_>, field: &str) -> Option<String> {
        match &untag(node).data {
            YamlData::Value(Scalar::String(s)) => Some(s.to_string()),
            _ => {
                self.error(field, format!("must be a string, found {}", kind_name(node)), Some(pos(node)));
                None
            }
        }
    }

    fn optional_string(&mut self, entries: &Entries<'_, '_>, parent: &str, key: &str) -> Option<String> {
        let (_, v) = entries.get(key)?;
        if is_null(v) {
            return None;
        }
        self.string(v, &join(parent, key))
    }

    /// A boolean. YAML 1.1 spellings (`yes`, `off`), which Docspell's parser reads as booleans,
    /// are accepted with a warning so existing descriptors keep working.
    fn boolean(&mut self, node: &Node<'_>, field: &str) -> Option<bool> {
        match &untag(node).data {
            YamlData::Value(Scalar::Boolean(b)) => Some(*b),
            YamlData::Value(Scalar::String(s)) => {
                let v = match s.to_ascii_lowercase().as_str() {
                    "yes" | "on" | "y" => Some(true),
                    "no" | "off" | "n" => Some(false),
                    _ => None,
                };
                match v {
                    Some(b) => {
                        self.warning(field, format!("`{s}` is a YAML 1.1 boolean; write `{b}`"), Some(pos(node)));
                        Some(b)
                    }
                    None => {
                        self.error(field, format!("must be true or false, found the string `{s}`"), Some(pos(node)));
                        None
                    }
                }
            }
            _ => {
                self.error(field, format!("must be true or false, found {}", kind_name(node)), Some(pos(node)));
                None
            }
        }
    }

    fn meta(&mut self, root: &Entries<'_, '_>) -> Meta {
        let mut meta = Meta { name: String::new(), version: String::new(), description: None };
        let Some(node) = self.required(root, "", "meta", None, "a mapping with `name` and `version`") else {
            return meta;
        };
        let meta_pos = root.get("meta").map(|(k, _)| pos(k));
        let Some(entries) = self.mapping(node, "meta", "`meta`") else {
            return meta;
        };
        self.unknown_keys(&entries, "meta", &META_KEYS);
        if let Some(n) = self.required(&entries, "meta", "name", meta_pos, "the addon's name, a string") {
            meta.name = self.name_like(n, "meta.name");
        }
        if let Some(n) = self.required(&entries, "meta", "version", meta_pos, "the addon's version, a string") {
            meta.version = self.name_like(n, "meta.version");
        }
        meta.description = self.optional_string(&entries, "meta", "description");
        meta
    }

    /// Name and version: one path component without whitespace. A YAML number is taken by its
    /// source text (`2.10` stays `2.10`) with a warning.
    fn name_like(&mut self, node: &Node<'_>, field: &str) -> String {
        let at = Some(pos(node));
        let value = match &untag(node).data {
            YamlData::Value(Scalar::String(s)) => s.to_string(),
            YamlData::Value(Scalar::Integer(_)) | YamlData::Value(Scalar::FloatingPoint(_)) => {
                let raw = self.raw(untag(node));
                self.warning(
                    field,
                    format!(
                        "is a YAML number; quote it (\"{raw}\") so it stays text. Docspell rejects it; read as `{raw}`"
                    ),
                    at,
                );
                raw
            }
            _ => {
                self.error(field, format!("must be a string, found {}", kind_name(node)), at);
                return String::new();
            }
        };
        if value.trim().is_empty() {
            self.error(field, "must not be empty", at);
        } else if value.chars().any(char::is_whitespace) {
            self.error(field, format!("must not contain whitespace, found `{value}`"), at);
        } else if value == "." || value == ".." || value.contains(['/', '\\']) || value.chars().any(char::is_control) {
            self.error(
                field,
                format!("must be usable as a directory name (no `/`, `\\`, control characters, not `.` or `..`), found `{value}`"),
                at,
            );
        } else if value.len() > 200 {
            self.error(field, "must be at most 200 bytes long", at);
        }
        value
    }

    fn triggers(&mut self, root: &Entries<'_, '_>) -> Vec<Trigger> {
        let mut out = Vec::new();
        let Some((_, node)) = root.get("triggers") else { return out };
        if is_null(node) {
            return out;
        }
        let allowed = Trigger::ALL.map(Trigger::as_str).join(", ");
        let YamlData::Sequence(items) = &untag(node).data else {
            self.error(
                "triggers",
                format!("must be a list of triggers ({allowed}), found {}", kind_name(node)),
                Some(pos(node)),
            );
            return out;
        };
        for (i, item) in items.iter().enumerate() {
            let field = format!("triggers[{i}]");
            let Some(s) = self.string(item, &field) else { continue };
            match Trigger::parse(&s) {
                Some(t) if !out.contains(&t) => out.push(t),
                Some(_) => self.warning(&field, format!("trigger `{s}` is listed twice"), Some(pos(item))),
                None => self.error(&field, format!("unknown trigger `{s}`; allowed: {allowed}"), Some(pos(item))),
            }
        }
        out
    }

    fn args(&mut self, root: &Entries<'_, '_>) -> Vec<String> {
        let mut out = Vec::new();
        let Some((_, node)) = root.get("args") else { return out };
        if is_null(node) {
            return out;
        }
        let YamlData::Sequence(items) = &untag(node).data else {
            self.error("args", format!("must be a list of strings, found {}", kind_name(node)), Some(pos(node)));
            return out;
        };
        for (i, item) in items.iter().enumerate() {
            let field = format!("args[{i}]");
            match &untag(item).data {
                YamlData::Value(Scalar::String(s)) => out.push(s.to_string()),
                _ => {
                    let raw = self.raw(untag(item));
                    self.error(
                        &field,
                        format!("must be a string, found {} (quote it: \"{raw}\")", kind_name(item)),
                        Some(pos(item)),
                    );
                }
            }
        }
        out
    }

    /// The runner section, and which of its keys are present at all (for auto-detection).
    fn runner(&mut self, root: &Entries<'_, '_>) -> (RunnerSection, Present) {
        let mut section = RunnerSection::default();
        let mut present = Present::default();
        let Some((rkey, node)) = root.get("runner") else { return (section, present) };
        if is_null(node) {
            return (section, present);
        }
        let Some(entries) = self.mapping(node, "runner", "`runner`") else {
            return (section, present);
        };
        self.unknown_keys(&entries, "runner", &RUNNER_KEYS);
        let _ = rkey;
        if let Some((k, v)) = entries.get("nix") {
            present.nix = true;
            if let Some(e) = self.sub_section(v, "runner.nix", &NIX_KEYS) {
                let enable = self.enable(&e, "runner.nix", pos(k));
                section.nix = Some(NixRunner { enable });
            }
        }
        if let Some((k, v)) = entries.get("docker") {
            present.docker = true;
            if let Some(e) = self.sub_section(v, "runner.docker", &DOCKER_KEYS) {
                let enable = self.enable(&e, "runner.docker", pos(k));
                let image = self.optional_string(&e, "runner.docker", "image");
                if let Some(why) = image.as_deref().and_then(|i| image_reference(i).err()) {
                    let at = e.get("image").map(|(_, v)| pos(v));
                    self.error(
                        "runner.docker.image",
                        format!("must be an image reference (`[registry/]name[:tag][@sha256:digest]`): {why}"),
                        at,
                    );
                }
                let build = self.optional_string(&e, "runner.docker", "build");
                if let (Some(b), Some((_, bnode))) = (&build, e.get("build")) {
                    if let Err(why) = normalise_relative(b) {
                        self.error("runner.docker.build", format!("`{b}` {why}"), Some(pos(bnode)));
                    }
                }
                section.docker = Some(DockerRunner { enable, image, build });
            }
        }
        if let Some((k, v)) = entries.get("trivial") {
            if let Some(e) = self.sub_section(v, "runner.trivial", &TRIVIAL_KEYS) {
                let enable = self.enable(&e, "runner.trivial", pos(k));
                let exec = self.exec(&e, enable, pos(k));
                section.trivial = Some(TrivialRunner { enable, exec });
            }
        }
        (section, present)
    }

    fn sub_section<'n, 'a>(&mut self, node: &'n Node<'a>, field: &str, known: &[&str]) -> Option<Entries<'n, 'a>> {
        if is_null(node) {
            self.warning(field, "is empty and ignored; write `enable: true` or `enable: false`", Some(pos(node)));
            return None;
        }
        let entries = self.mapping(node, field, &format!("`{field}`"))?;
        self.unknown_keys(&entries, field, known);
        Some(entries)
    }

    fn enable(&mut self, entries: &Entries<'_, '_>, parent: &str, parent_pos: Pos) -> bool {
        self.required(entries, parent, "enable", Some(parent_pos), "true or false")
            .and_then(|n| self.boolean(n, &join(parent, "enable")))
            .unwrap_or(false)
    }

    fn exec(&mut self, entries: &Entries<'_, '_>, enable: bool, parent_pos: Pos) -> Option<String> {
        let field = "runner.trivial.exec";
        let Some((_, node)) = entries.get("exec").filter(|(_, v)| !is_null(v)) else {
            if enable {
                self.error(
                    field,
                    "missing `exec`: the path of the program to run, relative to the addon root",
                    Some(parent_pos),
                );
            } else {
                self.warning(field, "missing `exec` (Docspell rejects a trivial section without it)", Some(parent_pos));
            }
            return None;
        };
        let exec = self.string(node, field)?;
        if let Err(why) = normalise_relative(&exec) {
            self.error(field, format!("`{exec}` {why}"), Some(pos(node)));
        }
        Some(exec)
    }

    fn options(&mut self, root: &Entries<'_, '_>) -> Option<Options> {
        let (k, node) = root.get("options")?;
        if is_null(node) {
            return None;
        }
        let entries = self.mapping(node, "options", "`options`")?;
        self.unknown_keys(&entries, "options", &OPTION_KEYS);
        let mut flag = |key: &str, default: bool, meaning: &str| -> bool {
            let field = join("options", key);
            match entries.get(key) {
                Some((_, v)) if !is_null(v) => self.boolean(v, &field).unwrap_or(default),
                _ => {
                    self.warning(
                        &field,
                        format!("missing `{key}`; using {default} ({meaning}). Docspell requires it"),
                        Some(pos(k)),
                    );
                    default
                }
            }
        };
        let networking = flag("networking", false, "no network");
        let collect_output = flag("collectOutput", true, "stdout is the addon's output");
        Some(Options { networking, collect_output })
    }

    /// Docspell's auto-detection: a runner without a key in the descriptor is enabled when its
    /// build file exists (`flake.nix` for nix, `Dockerfile` for docker).
    fn auto_detect(&mut self, runner: &mut RunnerSection, present: &Present, root: &Path) {
        if !present.nix && root.join("flake.nix").is_file() {
            runner.nix = Some(NixRunner { enable: true });
        }
        if !present.docker && root.join("Dockerfile").is_file() {
            runner.docker = Some(DockerRunner { enable: true, image: None, build: None });
        }
    }

    fn file_checks(&mut self, runner: &RunnerSection, root_entries: &Entries<'_, '_>, root: &Path) {
        let at = |path: &[&str]| -> Option<Pos> {
            // Position of the deepest existing key on the path.
            let mut entries_pos = None;
            let mut cur: Option<&Node<'_>> = None;
            for (i, key) in path.iter().enumerate() {
                let found = if i == 0 {
                    root_entries.get(key)
                } else {
                    cur.and_then(|n| match &untag(n).data {
                        YamlData::Mapping(m) => m
                            .iter()
                            .find(|(k, _)| matches!(&untag(k).data, YamlData::Value(Scalar::String(s)) if s == key)),
                        _ => None,
                    })
                };
                match found {
                    Some((k, v)) => {
                        entries_pos = Some(pos(if i + 1 == path.len() { v } else { k }));
                        cur = Some(v);
                    }
                    None => break,
                }
            }
            entries_pos
        };
        if let Some(t) = runner.trivial.as_ref().filter(|t| t.enable) {
            if let Some(exec) = &t.exec {
                if let Ok(rel) = normalise_relative(exec) {
                    let p = root.join(&rel);
                    let problem = match fs_err::metadata(&p) {
                        Err(_) => Some(format!("`{exec}` does not exist in the addon")),
                        Ok(m) if !m.is_file() => Some(format!("`{exec}` is not a file")),
                        Ok(_) => match (p.canonicalize(), root.canonicalize()) {
                            (Ok(real), Ok(base)) if !real.starts_with(&base) => {
                                Some(format!("`{exec}` is a symlink that leads out of the addon"))
                            }
                            _ => None,
                        },
                    };
                    if let Some(msg) = problem {
                        self.error("runner.trivial.exec", msg, at(&["runner", "trivial", "exec"]));
                    }
                }
            }
        }
        if let Some(d) = runner.docker.as_ref().filter(|d| d.enable) {
            if d.image.is_none() {
                let file = d.build.as_deref().unwrap_or("Dockerfile");
                let exists = normalise_relative(file).map(|rel| root.join(rel).is_file()).unwrap_or(false);
                if !exists {
                    self.error(
                        "runner.docker",
                        format!("docker is enabled without `image` and the addon has no Dockerfile at `{file}`; set `image` or add the Dockerfile"),
                        at(&["runner", "docker", "enable"]),
                    );
                }
            }
        }
        if runner.nix.as_ref().is_some_and(|n| n.enable) && !root.join("flake.nix").is_file() {
            self.error(
                "runner.nix.enable",
                "nix is enabled but the addon has no flake.nix at its root",
                at(&["runner", "nix", "enable"]),
            );
        }
    }
}

#[derive(Debug, Default)]
struct Present {
    nix: bool,
    docker: bool,
}

/// Normalises a path that must stay inside the addon: relative, no escape through `..`.
/// Returns the clean relative path, or why it is refused.
pub fn normalise_relative(p: &str) -> Result<PathBuf, &'static str> {
    if p.trim().is_empty() {
        return Err("must not be empty");
    }
    if p.contains('\0') {
        return Err("must not contain NUL bytes");
    }
    let path = Path::new(p);
    let mut out = PathBuf::new();
    let mut depth = 0usize;
    for c in path.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => {
                return Err("must be relative to the addon root, not absolute")
            }
            Component::CurDir => {}
            Component::ParentDir => {
                if depth == 0 {
                    return Err("leaves the addon directory (`..`); it must stay inside the addon");
                }
                depth -= 1;
                out.pop();
            }
            Component::Normal(s) => {
                depth += 1;
                out.push(s);
            }
        }
    }
    if depth == 0 {
        return Err("names the addon directory itself, not a file in it");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_paths() {
        assert_eq!(normalise_relative("./src/../a.sh").unwrap(), PathBuf::from("a.sh"));
        assert!(normalise_relative("/bin/sh").is_err());
        assert!(normalise_relative("src/../../x").is_err());
        assert!(normalise_relative(".").is_err());
        assert!(normalise_relative("").is_err());
    }
}

/// Why a text is not an image reference (see [`image_reference`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{reference}` {problem}")]
pub struct ImageReferenceError {
    /// The text as the descriptor or the Dockerfile gave it.
    pub reference: String,
    pub problem: ImageReferenceProblem,
}

/// The part of an image reference that is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ImageReferenceProblem {
    #[error("is empty or longer than 255 characters")]
    Length,
    #[error("has a digest without an algorithm")]
    DigestWithoutAlgorithm,
    #[error("has a malformed digest")]
    MalformedDigest,
    #[error("has a malformed tag")]
    MalformedTag,
    #[error("names a malformed registry")]
    MalformedRegistry,
    #[error("has a path component that is empty or does not start and end with a lowercase letter or digit")]
    PathComponent,
    #[error("has characters an image name cannot have")]
    Characters,
}

/// Checks that `s` is an image reference as Docker's reference grammar defines it
/// (`[domain[:port]/]path[:tag][@algorithm:hex]`, path components lowercase), and nothing
/// else: no transport (`docker-daemon:`, `oci:`), no storage specification (`[overlay@...]`),
/// no path of the host. The runners hand it to tools (skopeo's `containers-storage:` reads a
/// leading `[driver@root+runroot:options]` as a store to open, as root).
pub fn image_reference(s: &str) -> Result<(), ImageReferenceError> {
    let bad = |problem: ImageReferenceProblem| Err(ImageReferenceError { reference: s.to_string(), problem });
    if s.is_empty() || s.len() > 255 {
        return bad(ImageReferenceProblem::Length);
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        let Some((alg, hex)) = d.split_once(':') else { return bad(ImageReferenceProblem::DigestWithoutAlgorithm) };
        let alg_ok = alg.split(['+', '.', '-', '_']).all(|c| {
            c.chars().next().is_some_and(|f| f.is_ascii_alphabetic()) && c.chars().all(|ch| ch.is_ascii_alphanumeric())
        });
        if !alg_ok || hex.len() < 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return bad(ImageReferenceProblem::MalformedDigest);
        }
    }
    // A tag follows the last `:` after the last `/` (a `:` before it is a registry's port).
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        let ok = t.len() <= 128
            && t.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            && t.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok {
            return bad(ImageReferenceProblem::MalformedTag);
        }
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    let first = parts[0];
    if parts.len() > 1 && (first.contains('.') || first.contains(':') || first == "localhost") {
        let (host, port) = match first.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (first, None),
        };
        let host_ok = !host.is_empty()
            && host.split('.').all(|c| {
                !c.is_empty()
                    && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
                    && !c.starts_with('-')
                    && !c.ends_with('-')
            });
        if !host_ok || port.is_some_and(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_digit())) {
            return bad(ImageReferenceProblem::MalformedRegistry);
        }
        parts.remove(0);
    }
    for c in &parts {
        // alpha-numeric (separator alpha-numeric)*, separators `.`, `_`, `__`, `-`+.
        let chars: Vec<char> = c.chars().collect();
        let alnum = |ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit();
        if chars.is_empty() || !alnum(chars[0]) || !alnum(chars[chars.len() - 1]) {
            return bad(ImageReferenceProblem::PathComponent);
        }
        let mut i = 0;
        while i < chars.len() {
            if alnum(chars[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < chars.len() && !alnum(chars[i]) {
                i += 1;
            }
            let sep: String = chars[start..i].iter().collect();
            if !(sep == "." || sep == "_" || sep == "__" || sep.chars().all(|ch| ch == '-')) {
                return bad(ImageReferenceProblem::Characters);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod image_reference_tests {
    use super::image_reference;

    #[test]
    fn references_and_what_is_not_one() {
        for ok in [
            "busybox",
            "library/busybox:1.36",
            "docker.io/library/busybox:latest",
            "localhost:5000/addon/x:1.0",
            "ghcr.io/tiborrr/docspell-addon-example",
            "my_org/my-addon__x.y:v1.2-rc_3",
            "busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(image_reference(ok).is_ok(), "{ok}: {:?}", image_reference(ok));
        }
        for bad in [
            "[overlay@/srv/store+/srv/run:overlay.mount_program=/srv/pwn]x:1",
            "docker-daemon:busybox:latest",
            "oci:/tmp/layout:x",
            "dir:/etc",
            "../containers/json",
            "/etc/passwd",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "busybox@sha256:xyz",
            "a//b",
            "a b",
            "-v",
            "busybox?x=1",
            "",
        ] {
            assert!(image_reference(bad).is_err(), "{bad} was taken for a reference");
        }
    }
}
