//! The Docspell addon output format: what an addon that collects output prints on stdout.
//!
//! Typed so that it round-trips through JSON, and judged with [`AddonOutput::check`]: ids use
//! Docspell's characters, and every file path is relative and names a file inside the output
//! directory. Unknown keys are ignored, as Docspell ignores them.

use std::collections::BTreeMap;
use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::parse::normalise_relative;

/// Everything an addon can ask Docspell to do. All keys are optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "Docspell addon output (stdout of an addon that collects output)")]
pub struct AddonOutput {
    #[serde(default)]
    pub commands: Vec<Command>,
    #[serde(default)]
    pub files: Vec<ItemFiles>,
    #[serde(default, rename = "newItems")]
    pub new_items: Vec<NewItem>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "command", rename_all = "kebab-case", rename_all_fields = "camelCase")]
pub enum Command {
    /// Change an item.
    ItemUpdate { item_id: String, actions: Vec<ItemAction> },
    /// Change an attachment of an item.
    AttachmentUpdate { item_id: String, attach_id: String, actions: Vec<AttachmentAction> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum ItemAction {
    AddTags {
        tags: Vec<String>,
    },
    ReplaceTags {
        tags: Vec<String>,
    },
    RemoveTags {
        tags: Vec<String>,
    },
    RemoveTagsCategory {
        categories: Vec<String>,
    },
    SetFolder {
        #[serde(default)]
        folder: Option<String>,
    },
    SetCorrOrg {
        #[serde(default)]
        id: Option<String>,
    },
    SetCorrPerson {
        #[serde(default)]
        id: Option<String>,
    },
    SetConcPerson {
        #[serde(default)]
        id: Option<String>,
    },
    SetConcEquipment {
        #[serde(default)]
        id: Option<String>,
    },
    SetField {
        field: String,
        value: String,
    },
    SetName {
        name: String,
    },
    SetNotes {
        #[serde(default)]
        notes: Option<String>,
    },
    AddNotes {
        notes: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        separator: Option<String>,
    },
    /// `date` in milliseconds since the epoch.
    SetDate {
        date: i64,
    },
    /// `duedate` in milliseconds since the epoch; absent clears it.
    SetDueDate {
        #[serde(default, alias = "dueDate")]
        duedate: Option<i64>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum AttachmentAction {
    SetExtractedText {
        #[serde(default)]
        text: Option<String>,
    },
}

/// Files for one item; paths are relative to `OUTPUT_DIR`. Maps are keyed by attachment id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ItemFiles {
    pub item_id: String,
    #[serde(default)]
    pub text_files: BTreeMap<String, String>,
    #[serde(default)]
    pub pdf_files: BTreeMap<String, String>,
    #[serde(default)]
    pub preview_images: BTreeMap<String, String>,
    #[serde(default)]
    pub new_files: Vec<NewFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NewFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<NewFileMeta>,
    pub file: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewFileMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_duplicate: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachments_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_data: Option<serde_json::Value>,
}

/// A new item made of files from the output directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NewItem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<NewItemMeta>,
    #[serde(default)]
    pub files: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewItemMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_duplicate: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachments_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_data: Option<serde_json::Value>,
}

/// Why an addon's stdout is not a valid output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutputError {
    #[error("stdout is not UTF-8 text (first bad byte at offset {offset})")]
    NotUtf8 { offset: usize },
    #[error("stdout is not a valid addon output: at `{path}`: {message}")]
    Json { path: String, message: String },
    #[error("invalid addon output at `{path}`: {message}")]
    Invalid { path: String, message: String },
}

impl AddonOutput {
    /// Parses an addon's stdout as Docspell does: non-blank lines joined, empty means empty output.
    pub fn from_stdout(stdout: &[u8]) -> Result<AddonOutput, OutputError> {
        let text = std::str::from_utf8(stdout).map_err(|e| OutputError::NotUtf8 { offset: e.valid_up_to() })?;
        let joined: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if joined.is_empty() {
            return Ok(AddonOutput::default());
        }
        let joined = joined.join("\n");
        let de = &mut serde_json::Deserializer::from_str(&joined);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            OutputError::Json {
                path: if path == "." { "(top level)".into() } else { path },
                message: e.into_inner().to_string(),
            }
        })
    }

    /// Checks ids and file paths. With `output_dir`, every named file must exist there.
    pub fn check(&self, output_dir: Option<&Path>) -> Result<(), OutputError> {
        let bad = |path: String, message: String| Err(OutputError::Invalid { path, message });
        for (i, c) in self.commands.iter().enumerate() {
            match c {
                Command::ItemUpdate { item_id, .. } => check_id(item_id, &format!("commands[{i}].itemId"))?,
                Command::AttachmentUpdate { item_id, attach_id, .. } => {
                    check_id(item_id, &format!("commands[{i}].itemId"))?;
                    check_id(attach_id, &format!("commands[{i}].attachId"))?;
                }
            }
        }
        let check_file = |file: &str, path: String| -> Result<(), OutputError> {
            let rel = match normalise_relative(file) {
                Ok(rel) => rel,
                Err(why) => return bad(path, format!("file `{file}` {why}")),
            };
            if let Some(dir) = output_dir {
                // No component may be a symlink: `sub/x` with `sub -> /etc` would name a host file.
                let mut at = dir.to_path_buf();
                for part in rel.parent().into_iter().flat_map(|p| p.components()) {
                    at.push(part);
                    match fs_err::symlink_metadata(&at) {
                        Ok(m) if m.is_dir() => {}
                        _ => {
                            return bad(
                                path,
                                format!(
                                    "`{file}`: `{}` is not a directory in the output directory",
                                    at.strip_prefix(dir).unwrap_or(&at).display()
                                ),
                            )
                        }
                    }
                }
                let full = dir.join(&rel);
                match fs_err::symlink_metadata(&full) {
                    Ok(m) if m.is_file() => {}
                    Ok(_) => return bad(path, format!("`{file}` is not a regular file in the output directory")),
                    Err(_) => return bad(path, format!("file `{file}` does not exist in the output directory")),
                }
            }
            Ok(())
        };
        for (i, f) in self.files.iter().enumerate() {
            check_id(&f.item_id, &format!("files[{i}].itemId"))?;
            for (name, map) in
                [("textFiles", &f.text_files), ("pdfFiles", &f.pdf_files), ("previewImages", &f.preview_images)]
            {
                for (key, file) in map {
                    check_id(key, &format!("files[{i}].{name}.{key}"))?;
                    check_file(file, format!("files[{i}].{name}.{key}"))?;
                }
            }
            for (j, nf) in f.new_files.iter().enumerate() {
                check_file(&nf.file, format!("files[{i}].newFiles[{j}].file"))?;
            }
        }
        for (i, item) in self.new_items.iter().enumerate() {
            for (j, file) in item.files.iter().enumerate() {
                check_file(file, format!("newItems[{i}].files[{j}]"))?;
            }
        }
        Ok(())
    }

    /// Appends another addon's output after this one (run order is kept).
    pub fn extend(&mut self, other: AddonOutput) {
        self.commands.extend(other.commands);
        self.files.extend(other.files);
        self.new_items.extend(other.new_items);
    }

    /// True when the addon asked for nothing.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty() && self.files.is_empty() && self.new_items.is_empty()
    }
}

fn check_id(id: &str, path: &str) -> Result<(), OutputError> {
    let ok = !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(OutputError::Invalid {
            path: path.to_string(),
            message: format!("id `{id}` may only contain letters, digits and `-_.@`"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{
      "commands": [
        {"command": "item-update", "itemId": "item-1", "actions": [
          {"action": "add-tags", "tags": ["a", "b"]},
          {"action": "replace-tags", "tags": ["c"]},
          {"action": "remove-tags", "tags": ["d"]},
          {"action": "remove-tags-category", "categories": ["x"]},
          {"action": "set-folder", "folder": "f"},
          {"action": "set-corr-org", "id": "o"},
          {"action": "set-corr-person", "id": "p"},
          {"action": "set-conc-person"},
          {"action": "set-conc-equipment", "id": "e"},
          {"action": "set-field", "field": "amount", "value": "12.50"},
          {"action": "set-name", "name": "Invoice"},
          {"action": "set-notes", "notes": "n"},
          {"action": "add-notes", "notes": "more", "separator": "\n"},
          {"action": "set-date", "date": 1700000000000},
          {"action": "set-due-date", "duedate": 1700000000001}
        ]},
        {"command": "attachment-update", "itemId": "item-1", "attachId": "att.1@x",
         "actions": [{"action": "set-extracted-text", "text": "hello"}]}
      ],
      "files": [
        {"itemId": "item-1", "textFiles": {"att1": "a.txt"}, "pdfFiles": {"att1": "sub/a.pdf"},
         "previewImages": {}, "newFiles": [{"metadata": {"language": "deu", "skipDuplicate": true}, "file": "new.pdf"}]},
        {"itemId": "item-1", "textFiles": {"att2": "b.txt"}}
      ],
      "newItems": [{"metadata": {"language": "eng", "direction": "incoming", "tags": ["t"]}, "files": ["n.pdf"]}]
    }"#;

    #[test]
    fn files_behind_a_symlinked_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("sub")).unwrap();
        fs_err::create_dir(dir.path().join("real")).unwrap();
        fs_err::write(dir.path().join("real/ok.txt"), "x").unwrap();
        let out = AddonOutput::from_stdout(br#"{"newItems": [{"files": ["sub/hostname"]}]}"#).unwrap();
        let e = out.check(Some(dir.path())).unwrap_err().to_string();
        assert!(e.contains("sub") && e.contains("not a directory"), "{e}");
        let ok = AddonOutput::from_stdout(br#"{"newItems": [{"files": ["real/ok.txt"]}]}"#).unwrap();
        ok.check(Some(dir.path())).unwrap();
    }

    #[test]
    fn every_action_round_trips() {
        let out = AddonOutput::from_stdout(FULL.as_bytes()).unwrap();
        assert_eq!(out.commands.len(), 2);
        assert_eq!(out.files.len(), 2, "the same itemId twice is kept twice");
        let json = serde_json::to_string(&out).unwrap();
        let again: AddonOutput = serde_json::from_str(&json).unwrap();
        assert_eq!(out, again);
        out.check(None).unwrap();
    }

    #[test]
    fn due_date_alias() {
        let out = AddonOutput::from_stdout(
            br#"{"commands":[{"command":"item-update","itemId":"i","actions":[{"action":"set-due-date","dueDate":5}]}]}"#,
        )
        .unwrap();
        let Command::ItemUpdate { actions, .. } = &out.commands[0] else { panic!() };
        assert_eq!(actions[0], ItemAction::SetDueDate { duedate: Some(5) });
    }

    #[test]
    fn blank_lines_and_empty_stdout() {
        assert_eq!(AddonOutput::from_stdout(b"").unwrap(), AddonOutput::default());
        assert_eq!(AddonOutput::from_stdout(b"\n  \n").unwrap(), AddonOutput::default());
        let out = AddonOutput::from_stdout(b"\n\n{\"commands\": []\n\n}\n").unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn errors_name_the_place() {
        let e = AddonOutput::from_stdout(
            br#"{"commands":[{"command":"item-update","itemId":"i","actions":[{"action":"fly"}]}]}"#,
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("commands[0]"), "{msg}");
        assert!(msg.contains("fly"), "{msg}");
        let e = AddonOutput::from_stdout(b"hello world").unwrap_err();
        assert!(matches!(e, OutputError::Json { .. }), "{e}");
        assert!(matches!(AddonOutput::from_stdout(b"\xff"), Err(OutputError::NotUtf8 { .. })));
    }

    #[test]
    fn ids_and_paths_are_checked() {
        let bad_id =
            AddonOutput::from_stdout(br#"{"commands":[{"command":"item-update","itemId":"a b","actions":[]}]}"#)
                .unwrap();
        assert!(bad_id.check(None).unwrap_err().to_string().contains("commands[0].itemId"));
        let escape = AddonOutput::from_stdout(br#"{"newItems":[{"files":["../etc/passwd"]}]}"#).unwrap();
        assert!(escape.check(None).unwrap_err().to_string().contains("newItems[0].files[0]"));
        let abs = AddonOutput::from_stdout(br#"{"newItems":[{"files":["/etc/passwd"]}]}"#).unwrap();
        assert!(abs.check(None).is_err());
        let dir = tempfile::tempdir().unwrap();
        let missing = AddonOutput::from_stdout(br#"{"newItems":[{"files":["x.pdf"]}]}"#).unwrap();
        assert!(missing.check(Some(dir.path())).unwrap_err().to_string().contains("does not exist"));
        fs_err::write(dir.path().join("x.pdf"), b"%PDF").unwrap();
        missing.check(Some(dir.path())).unwrap();
    }
}
