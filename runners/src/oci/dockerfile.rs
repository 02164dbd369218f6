//! A Dockerfile read the way its builders read it (BuildKit's and buildah's parser), to decide
//! what a build may do before buildah runs the addon's code:
//! - parser directives at the top (`# escape=`` ` ``, `# syntax=...`): only before any other
//!   line, comment or blank line;
//! - an instruction continues over lines ending in the escape character (trailing blanks
//!   allowed); comment lines and blank lines inside a continuation are skipped, not ends;
//! - an instruction's flags are the words right after its keyword that start with `--`.
//!
//! Where builders have read a file differently over the years, every reading is checked and the
//! strictest wins: the text is judged with both escape characters, whatever its directives say
//! (builders differ on where a directive may stand). Flags are words the way the builders split
//! them (on bytes: a byte 0x85 or 0xA0 inside a UTF-8 character ends a word there); a flag
//! written so that builders could read it other ways (quotes, backslashes, bytes beyond ASCII,
//! a value in the next word) is refused as such.

/// One instruction: where it starts, its keyword (upper case) and its flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// 1-based line of the keyword.
    pub line: usize,
    pub keyword: String,
    /// Words after the keyword that start with `--` (for `ONBUILD`, those of the instruction
    /// it wraps, whose keyword is `ONBUILD <KEYWORD>`).
    pub flags: Vec<String>,
    /// It opens a heredoc (`<<`): builders that read heredocs take the lines after it as its
    /// body, which this check reads as instructions.
    pub heredoc: bool,
    /// The words after the flags (`debian:bookworm-slim AS build` of a `FROM`).
    pub args: Vec<String>,
}

/// Why a Dockerfile is refused before any builder reads it. Every message starts with the line
/// it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerfileError {
    #[error("line {line}: only one escape parser directive can be used")]
    EscapeTwice { line: usize },
    #[error("line {line}: invalid escape character `{escape}` (only \\ and `)")]
    BadEscape { line: usize, escape: String },
    #[error(
        "line {line}: `{word}`: an image named through a variable without a plain ARG default is refused \
         (the engine checks every image a build reads); write the image's name"
    )]
    UnresolvedImage { line: usize, word: String },
    #[error("line {line}: image {source}: only an image reference (no transport, no store or path) is allowed")]
    Image {
        line: usize,
        #[source]
        source: addon_descriptors::ImageReferenceError,
    },
    #[error(
        "line {line}: `ADD {url}`: ADD from a URL is refused: the builder fetches it on the host's own network, \
         whatever network.build says; fetch it in a RUN step (which gets the build's network) or put it in \
         the addon"
    )]
    AddUrl { line: usize, url: String },
    #[error(
        "line {line}: `{keyword} <<`: heredocs are refused with {builder} (put the script in a file of the addon and COPY it)"
    )]
    Heredoc { line: usize, keyword: String, builder: String },
    #[error(
        "line {line}: `{keyword} {flag}`: RUN options are refused: {builder} resolves `RUN --mount` sources on the \
         host before buildah {fixed} (CVE-2024-1753, CVE-2024-9407, CVE-2024-9675, CVE-2024-11218); use a plain \
         RUN, or a buildah of {fixed} or later",
        fixed = mount_fixed()
    )]
    MountBeforeFix { line: usize, keyword: String, flag: String, builder: String },
    #[error(
        "line {line}: `{keyword} {flag}`: RUN options are refused: it would widen what the step may reach beyond \
         the engine's build settings; use a plain RUN"
    )]
    RunOption { line: usize, keyword: String, flag: String },
}

/// [`BUILDAH_MOUNT_FIXED`] as a version.
fn mount_fixed() -> String {
    let (a, b, c) = BUILDAH_MOUNT_FIXED;
    format!("{a}.{b}.{c}")
}

/// The escape character the directives at the top name (`\` unless `# escape=`` ` ``).
fn escape_of(lines: &[&str]) -> Result<char, DockerfileError> {
    let mut escape = '\\';
    let mut seen = false;
    for (n, line) in lines.iter().enumerate() {
        let Some((key, value)) = directive(line) else { break };
        if key.eq_ignore_ascii_case("escape") {
            if seen {
                return Err(DockerfileError::EscapeTwice { line: n + 1 });
            }
            seen = true;
            escape = match value {
                "\\" => '\\',
                "`" => '`',
                other => return Err(DockerfileError::BadEscape { line: n + 1, escape: other.to_string() }),
            };
        }
    }
    Ok(escape)
}

/// `# key=value` at the top of a file: `^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`, after
/// leading blanks (builders strip them).
fn directive(line: &str) -> Option<(&str, &str)> {
    let rest = line.trim_start().strip_prefix('#')?.trim_start();
    let key_len = rest.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(rest.len());
    let key = &rest[..key_len];
    if !key.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let value = rest[key_len..].trim_start().strip_prefix('=')?.trim();
    (!value.is_empty()).then_some((key, value))
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// The line without the escape character (and blanks after it) at its end, and whether it had one.
fn continued(line: &str, escape: char) -> (&str, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    match trimmed.strip_suffix(escape) {
        Some(rest) => (rest, true),
        None => (line, false),
    }
}

/// The instructions of `text` read with escape character `escape`.
fn instructions_with(lines: &[&str], escape: char) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        if line.trim().is_empty() || is_comment(line) {
            continue;
        }
        let start = i;
        let (first, mut more) = continued(line, escape);
        let mut text = first.to_string();
        while more && i < lines.len() {
            let next = lines[i];
            i += 1;
            if is_comment(next) || next.trim().is_empty() {
                continue;
            }
            let (part, again) = continued(next, escape);
            text.push_str(part);
            more = again;
        }
        if let Some(ins) = instruction(&text, start) {
            out.push(ins);
        }
    }
    out
}

/// Keyword and flags of one logical line.
fn instruction(text: &str, line: usize) -> Option<Instruction> {
    let text = text.trim_start();
    let end = text.find(char::is_whitespace).unwrap_or(text.len());
    let keyword = text[..end].to_ascii_uppercase();
    if keyword.is_empty() {
        return None;
    }
    let mut rest = &text[end..];
    let mut keyword = keyword;
    if keyword == "ONBUILD" {
        let inner = rest.trim_start();
        let e = inner.find(char::is_whitespace).unwrap_or(inner.len());
        keyword = format!("ONBUILD {}", inner[..e].to_ascii_uppercase());
        rest = &inner[e..];
    }
    let mut flags = Vec::new();
    let mut args = Vec::new();
    // Split as the builders do, on bytes: any whitespace, and any character beyond ASCII (some of
    // their bytes are spaces to them).
    for word in rest.split(|c: char| c.is_whitespace() || !c.is_ascii()).filter(|w| !w.is_empty()) {
        if args.is_empty() && word.starts_with("--") && word != "--" {
            flags.push(word.to_string());
        } else {
            args.push(word.to_string());
        }
    }
    // Anything they could read another way is a flag we cannot judge.
    let region = rest.trim_start_matches(|c: char| c.is_whitespace() || !c.is_ascii());
    if region.starts_with("--")
        && (flags.iter().any(|f| f.contains(['"', '\'', '\\']) || !f.contains('=')) || !rest.is_ascii())
    {
        flags.push("--(written in a way the builders could read otherwise)".into());
    }
    let heredoc = rest.contains("<<");
    Some(Instruction { line, keyword, flags, heredoc, args })
}

/// Every instruction of the Dockerfile `text`, as each reading sees it (see the module docs).
pub fn instructions(text: &str) -> Result<Vec<Instruction>, DockerfileError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();
    escape_of(&lines)?;
    let mut all = instructions_with(&lines, '\\');
    all.extend(instructions_with(&lines, '`'));
    Ok(all)
}

/// What one reading of a Dockerfile takes from outside its build context.
#[derive(Debug, Default)]
struct Outside {
    /// Images, by line: each stage's base (`FROM`) and `COPY`/`ADD --from=` an image.
    images: Vec<(usize, String)>,
    /// Remote sources of `ADD` (a URL, a git address), by line.
    urls: Vec<(usize, String)>,
    /// An image named through a variable the file gives no plain default, by line.
    unresolved: Vec<(usize, String)>,
}

/// `word` with the global `ARG` defaults put in (`$NAME`, `${NAME}`); None when it uses a
/// variable without one, or a form (`${NAME:-x}`) this does not read.
fn substitute(word: &str, defaults: &[(String, String)]) -> Option<String> {
    let mut out = String::new();
    let mut rest = word;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, tail) = if let Some(inner) = after.strip_prefix('{') {
            let end = inner.find('}')?;
            (&inner[..end], &inner[end + 1..])
        } else {
            let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return None;
        }
        out.push_str(&defaults.iter().find(|(n, _)| n == name)?.1);
        rest = tail;
    }
    out.push_str(rest);
    Some(out)
}

fn outside_of(instructions: &[Instruction]) -> Outside {
    let mut found = Outside::default();
    let mut defaults: Vec<(String, String)> = Vec::new();
    let mut stages: Vec<String> = Vec::new();
    let mut seen_from = false;
    for ins in instructions {
        let keyword = ins.keyword.strip_prefix("ONBUILD ").unwrap_or(&ins.keyword);
        match keyword {
            // Only the ARGs before the first FROM are seen by FROM lines.
            "ARG" if !seen_from => {
                for a in &ins.args {
                    if let Some((name, value)) = a.split_once('=') {
                        let value = value.trim_matches('"').trim_matches('\'');
                        defaults.push((name.to_string(), value.to_string()));
                    }
                }
            }
            "FROM" => {
                seen_from = true;
                let Some(image) = ins.args.first() else { continue };
                match substitute(image, &defaults) {
                    None => found.unresolved.push((ins.line, image.clone())),
                    Some(image) => {
                        if image != "scratch" && !stages.contains(&image.to_ascii_lowercase()) {
                            found.images.push((ins.line, image));
                        }
                    }
                }
                if let [_, as_word, name, ..] = ins.args.as_slice() {
                    if as_word.eq_ignore_ascii_case("as") {
                        stages.push(name.to_ascii_lowercase());
                    }
                }
            }
            "COPY" | "ADD" => {
                for flag in &ins.flags {
                    let Some(from) = flag.strip_prefix("--from=") else { continue };
                    match substitute(from, &defaults) {
                        None => found.unresolved.push((ins.line, from.to_string())),
                        Some(from) => {
                            let stage = stages.contains(&from.to_ascii_lowercase())
                                || (!from.is_empty() && from.chars().all(|c| c.is_ascii_digit()));
                            if !stage {
                                found.images.push((ins.line, from));
                            }
                        }
                    }
                }
                if keyword == "ADD" {
                    for a in &ins.args {
                        let a = a.trim_matches(|c| c == '[' || c == ']' || c == ',' || c == '"');
                        if a.contains("://") || a.starts_with("git@") {
                            found.urls.push((ins.line, a.to_string()));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    found
}

/// What a build may take from outside its context, checked before any builder reads the file,
/// in every reading: images by a plain reference only (no transport such as
/// `containers-storage:[driver@root+runroot:options]`, `docker-daemon:`, `oci:` or `dir:`, which
/// make buildah open stores and paths of the host), named so the engine can read them (a
/// variable needs a plain `ARG` default), and no `ADD` of a URL: the builder itself fetches it,
/// on the host's own network (its loopback included), whatever `network.build` says.
pub fn check_sources(text: &str) -> Result<(), DockerfileError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();
    escape_of(&lines)?;
    for escape in ['\\', '`'] {
        let found = outside_of(&instructions_with(&lines, escape));
        if let Some((line, word)) = found.unresolved.first() {
            return Err(DockerfileError::UnresolvedImage { line: *line, word: word.clone() });
        }
        for (line, image) in &found.images {
            addon_descriptors::image_reference(image)
                .map_err(|source| DockerfileError::Image { line: *line, source })?;
        }
        if let Some((line, url)) = found.urls.first() {
            return Err(DockerfileError::AddUrl { line: *line, url: url.clone() });
        }
    }
    Ok(())
}

/// The images the Dockerfile `text` reads (stages' bases, `COPY`/`ADD --from=` an image),
/// each once, with global ARG defaults put in, read with the file's own escape character:
/// not `scratch`, not an earlier stage.
pub fn base_images(text: &str) -> Vec<String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();
    let Ok(escape) = escape_of(&lines) else { return Vec::new() };
    let mut bases: Vec<String> = Vec::new();
    for (_, image) in outside_of(&instructions_with(&lines, escape)).images {
        if !bases.contains(&image) {
            bases.push(image);
        }
    }
    bases
}

/// The buildah release from which `RUN --mount` is taken as safe: the fixes of CVE-2024-1753
/// (1.35.1: a bind mount's source could be any host path), CVE-2024-9407 (1.37.4:
/// `bind-propagation`), CVE-2024-9675 (1.38.0: a cache mount's source) and CVE-2024-11218
/// (1.38.1: changes in bind mounts kept).
pub const BUILDAH_MOUNT_FIXED: (u32, u32, u32) = (1, 38, 1);

/// Refuses what a build may not do: `RUN --network` and `RUN --security` always (they widen
/// what a step gets beyond the `network.build` setting and the builder's confinement), any other
/// `RUN` option unless `mount_safe` (a builder without the known `--mount` escapes), and the same
/// inside `ONBUILD`. `builder` names the builder in the message.
pub fn check(text: &str, mount_safe: bool, builder: &str) -> Result<(), DockerfileError> {
    for ins in instructions(text)? {
        if ins.keyword != "RUN" && ins.keyword != "ONBUILD RUN" {
            continue;
        }
        if mount_safe && ins.heredoc {
            // A builder new enough to allow mounts reads heredocs (buildah 1.33 and later): its
            // reading and this one part ways.
            return Err(DockerfileError::Heredoc {
                line: ins.line,
                keyword: ins.keyword,
                builder: builder.to_string(),
            });
        }
        for flag in &ins.flags {
            let name = flag.split('=').next().unwrap_or(flag);
            let allowed = mount_safe && name == "--mount";
            if !allowed {
                let (line, keyword, flag) = (ins.line, ins.keyword.clone(), flag.clone());
                return Err(if name == "--mount" {
                    DockerfileError::MountBeforeFix { line, keyword, flag, builder: builder.to_string() }
                } else {
                    DockerfileError::RunOption { line, keyword, flag }
                });
            }
        }
    }
    Ok(())
}

/// `buildah version` output (`Version:         1.28.2`) as numbers.
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Version:"))
        .or_else(|| text.split_whitespace().find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit())))?
        .trim();
    let mut parts = v.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty()).map(|p| p.parse::<u32>());
    Some((parts.next()?.ok()?, parts.next()?.ok()?, parts.next().and_then(Result::ok).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> String {
        check(text, false, "buildah 1.28").expect_err(text).to_string()
    }

    #[test]
    fn base_images_are_the_stages_starting_points() {
        let text = "# escape=`\nARG TAG=bookworm-slim\nFROM debian:${TAG} AS build\nRUN make\nFROM build AS test\n\
                    FROM `\n  scratch\nFROM registry.example/tools:1 as tools\nCOPY --from=tools /a /b\n\
                    COPY --from=0 /c /d\nCOPY --from=busybox:1 /bin/busybox /bin/\nFROM debian:bookworm-slim\n";
        assert_eq!(base_images(text), vec!["debian:bookworm-slim", "registry.example/tools:1", "busybox:1"]);
    }

    #[test]
    fn a_build_reads_images_by_reference_only_and_no_url() {
        for ok in [
            "FROM debian:bookworm-slim\nADD src.tar.gz /opt/\nCOPY --from=debian:12 /x /y\n",
            "ARG BASE=debian:12\nFROM $BASE AS b\nFROM b\nCOPY --from=b /x /y\n",
            "FROM scratch\nADD [\"a b\", \"/c\"]\n",
        ] {
            check_sources(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (evil, says) in [
            ("FROM containers-storage:[overlay@/tmp/st+/tmp/rr]foo\n", "line 1: image"),
            ("FROM docker-daemon:secret:latest\n", "line 1: image"),
            ("FROM oci:/tmp/layout:x\n", "line 1: image"),
            ("ARG B=containers-storage:[vfs@/x+/y]z\nFROM $B\n", "line 2: image"),
            ("FROM $UNSET\n", "without a plain ARG default"),
            ("FROM ${B:-debian}\n", "without a plain ARG default"),
            ("FROM scratch\nCOPY --from=docker-daemon:x:1 /a /b\n", "line 2: image"),
            ("FROM scratch\nADD http://127.0.0.1:18080/index.html /loot\n", "ADD from a URL is refused"),
            ("FROM scratch\nADD [\"https://example.org/x\", \"/x\"]\n", "ADD from a URL is refused"),
            ("FROM scratch\nADD git@example.org:x/y.git /src\n", "ADD from a URL is refused"),
            ("FROM scratch\nONBUILD ADD http://127.0.0.1/x /x\n", "ADD from a URL is refused"),
            ("# escape=`\nFROM scratch\nADD `\n  http://127.0.0.1/x /x\n", "ADD from a URL is refused"),
        ] {
            let e = check_sources(evil).expect_err(evil).to_string();
            assert!(e.contains(says), "{evil}: {e}");
        }
    }

    #[test]
    fn run_options_are_refused_however_the_file_is_written() {
        for evil in [
            "FROM scratch\nRUN --mount=type=bind,from=x,source=/l,target=/h,rw cat /h/etc/shadow\n",
            "from scratch\nrun   --mount=type=cache,target=/x true\n",
            "FROM scratch\nRUN \\\n  --network=host true\n",
            "FROM scratch\nRUN \\\n# a comment\n  --security=insecure true",
            // A blank line inside a continuation is skipped, not an end (the attack review's first form).
            "FROM scratch\nRUN \\\n\n  --mount=type=bind,source=hostlink,target=/h cat /h/x\n",
            "FROM scratch\nRUN \\\n   \t \n--mount=type=bind,source=/,target=/h true\n",
            // The escape directive (its second form): a backtick continues the line.
            "# escape=`\nFROM scratch\nRUN `\n  --mount=type=bind,source=hostlink,target=/h cat /h/x\n",
            "#escape = `\r\nFROM scratch\r\nRUN `  \r\n\r\n --mount=x y\r\n",
            // Trailing blanks after the escape character still continue.
            "FROM scratch\nRUN \\   \n--mount=x y\n",
            "FROM scratch\nRUN\t--mount=x y\n",
            "\u{feff}FROM scratch\nRUN --mount=x y\n",
            "FROM scratch\nONBUILD RUN --mount=x y\n",
            "FROM scratch\nonbuild run --network=host y\n",
            // A directive after blanks still counts to builders.
            " # escape=`\nFROM scratch\nRUN `\n  --mount=type=bind,source=/,target=/h cat /h/etc/shadow\n",
            // Without any directive, a line ending in a backtick is read both ways.
            "FROM scratch\nRUN `\n--mount=x y\n",
        ] {
            assert!(refused(evil).contains("RUN options are refused"), "{evil:?}");
        }
    }

    #[test]
    fn ordinary_dockerfiles_pass() {
        for fine in [
            "FROM scratch\nRUN echo --mount\nCOPY --from=build /a /a\nCOPY --chown=1:1 a /a\n",
            "FROM debian:bookworm-slim\nRUN apt-get update \\\n  && apt-get install -y \\\n    qpdf \\\n  # the PDF tools\n    poppler-utils\n",
            "# syntax=docker/dockerfile:1\n# escape=\\\nFROM scratch\nRUN true\n",
            "FROM scratch\nRUN [\"--mount=x\", \"y\"]\n",
            "FROM scratch\n# RUN --mount=x is only a comment\n",
        ] {
            assert!(check(fine, false, "buildah").is_ok(), "{fine:?}: {:?}", check(fine, false, "buildah"));
        }
    }

    #[test]
    fn both_escape_characters_are_always_read() {
        // After an instruction, `# escape=` is a comment to builders: the backslash still
        // continues lines (and the backtick reading is checked all the same).
        let ins = instructions("FROM scratch\n# escape=`\nRUN a \\\n--mount=x\n").unwrap();
        assert!(ins.iter().any(|i| i.keyword == "RUN" && i.flags.is_empty()), "{ins:?}");
        assert!(refused("FROM scratch\n# escape=`\nRUN \\\n--mount=x y\n").contains("line 3"));
        assert!(check("# escape=x\nFROM scratch\n", false, "b").unwrap_err().to_string().contains("invalid escape"));
    }

    #[test]
    fn flags_a_builder_could_read_otherwise_are_refused_even_where_mounts_are_allowed() {
        for evil in [
            "FROM scratch\nRUN --mount=\"type=cache,target=/x y\" --network=host cmd\n",
            "FROM scratch\nRUN --mount type=cache,target=/x --network=host cmd\n",
            "FROM scratch\nRUN --mount=type=cache,target=/x\\ a --network=host cmd\n",
            "FROM scratch\nRUN --mount=type=cache,target=/aÅ--network=host cmd\n",
            "FROM scratch\nRUN --mount=type=cache,target=/x <<EOF\nrm -rf /\nEOF\n",
        ] {
            assert!(check(evil, true, "buildah 1.38.1").is_err(), "{evil:?}");
        }
        assert!(check("FROM scratch\nRUN --mount=type=cache,target=/root/.cache pip install x\n", true, "b").is_ok());
    }

    #[test]
    fn a_fixed_builder_may_mount_but_never_widen() {
        assert!(check("FROM scratch\nRUN --mount=type=cache,target=/root/.cache pip install x\n", true, "b").is_ok());
        let e = check("FROM scratch\nRUN --network=host true\n", true, "b").unwrap_err().to_string();
        assert!(e.contains("--network=host"), "{e}");
        let e = refused("FROM scratch\n\nRUN --mount=x y\n");
        assert!(e.starts_with("line 3:") && e.contains("1.38.1") && e.contains("CVE-2024-1753"), "{e}");
    }

    #[test]
    fn buildah_versions() {
        assert_eq!(parse_version("Version:         1.28.2\nGo Version: go1.19"), Some((1, 28, 2)));
        assert_eq!(parse_version("buildah version 1.38.1 (image-spec 1.1.0)"), Some((1, 38, 1)));
    }
}
