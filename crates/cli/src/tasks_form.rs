//! The `multipart/form-data` body of `tasks submit --file …`: the submission's fields as text parts and each file
//! as a `file` part named by its base name (the server places it at `/data/uploads/<task_id>/<name>`).

use std::path::Path;

use serde_json::Value;

/// A built body and its `Content-Type` (with the boundary).
pub struct Form {
    pub content_type: String,
    pub body: Vec<u8>,
}

fn quoted(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The name a file is sent under: its base name, which must be UTF-8 without line breaks.
pub fn upload_name(path: &Path) -> anyhow::Result<String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow::anyhow!("{}: the file name is not UTF-8 (or there is none)", path.display()))?;
    anyhow::ensure!(!name.contains(['\r', '\n']), "{}: the file name holds a line break", path.display());
    Ok(name.to_string())
}

/// `fields` (a JSON object; strings sent as they are, other values as their JSON text) and `files` (name, bytes).
pub fn build(fields: &Value, files: &[(String, Vec<u8>)]) -> Form {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut boundary = format!("evershell-{seed:x}-{:x}", std::process::id());
    let holds = |b: &str| files.iter().any(|(_, data)| data.windows(b.len()).any(|w| w == b.as_bytes()));
    while holds(&boundary) {
        boundary.push('x');
    }
    let mut body = Vec::new();
    if let Some(map) = fields.as_object() {
        for (k, v) in map {
            let text = match v {
                Value::Null => continue,
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            body.extend_from_slice(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"\r\n\r\n", quoted(k)).as_bytes(),
            );
            body.extend_from_slice(text.as_bytes());
            body.extend_from_slice(b"\r\n");
        }
    }
    for (name, data) in files {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n",
                quoted(name)
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    Form { content_type: format!("multipart/form-data; boundary={boundary}"), body }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_files_as_parts() {
        let files = vec![("a \"b\".txt".to_string(), b"one\r\n--two".to_vec())];
        let f = build(&serde_json::json!({"description": "do it", "max_continuations": 3, "x": null}), &files);
        let boundary = f.content_type.split("boundary=").nth(1).unwrap().to_string();
        let text = String::from_utf8(f.body).unwrap();
        assert!(text.starts_with(&format!("--{boundary}\r\n")));
        assert!(text.contains("name=\"description\"\r\n\r\ndo it\r\n"));
        assert!(text.contains("name=\"max_continuations\"\r\n\r\n3\r\n"));
        assert!(!text.contains("name=\"x\""), "nulls are left out");
        assert!(text.contains("filename=\"a \\\"b\\\".txt\""));
        assert!(text.contains("\r\n\r\none\r\n--two\r\n"));
        assert!(text.ends_with(&format!("--{boundary}--\r\n")));
        assert!(upload_name(Path::new("/tmp/dir/notes.md")).unwrap() == "notes.md");
        assert!(upload_name(Path::new("/")).is_err());
    }
}
