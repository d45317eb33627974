//! Human-readable, aligned tables of the admin answers (the default output of the CLI).

use serde_json::Value;

use super::Request;

/// Columns padded to their widest cell, two spaces apart; the last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// A cell's text. Bodies, ids and resources come from remote users: a newline would break the
/// table's rows and an ESC could drive the operator's terminal, so control characters are shown
/// escaped (`\n`, `\u{1b}`).
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s
            .chars()
            .map(|c| match c.is_control() {
                true => c.escape_default().to_string(),
                false => c.to_string(),
            })
            .collect(),
        Value::Bool(true) => "yes".into(),
        Value::Bool(false) => "no".into(),
        other => other.to_string(),
    }
}

fn cells(item: &Value, keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| text(&item[*k])).collect()
}

fn items(v: &Value, key: &str) -> Vec<Value> {
    v[key].as_array().cloned().unwrap_or_default()
}

/// The order keys are printed in by `--json`: the order of DESIGN.md section 5
/// (`user, head, devices: [device, resource, acked_upto, ...]`) rather than serde_json's
/// alphabetical maps. Keys not listed come last, alphabetically.
const KEY_ORDER: &[&str] = &[
    "user",
    "head",
    "device",
    "resource",
    "acked_upto",
    "unread",
    "pending",
    "online",
    "last_seen",
    "seq",
    "time",
    "from",
    "id",
    "body",
    "receipt",
    "state",
    "service_running",
    "uptime_secs",
    "users",
    "devices",
    "messages",
    "pending_timers",
    "logged",
    "replays",
    "bounces",
    "receipts_accepted",
    "receipts_duplicate",
    "receipts_rejected",
    "store_bytes",
    "forgotten",
];

/// A JSON value serialised with its object keys in [`KEY_ORDER`].
struct Ordered<'a>(&'a Value);

impl serde::Serialize for Ordered<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.0 {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                let rank = |k: &str| KEY_ORDER.iter().position(|o| *o == k).unwrap_or(usize::MAX);
                keys.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)));
                let mut out = s.serialize_map(Some(keys.len()))?;
                for k in keys {
                    out.serialize_entry(k, &Ordered(&map[k]))?;
                }
                out.end()
            }
            Value::Array(items) => {
                let mut out = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    out.serialize_element(&Ordered(item))?;
                }
                out.end()
            }
            other => other.serialize(s),
        }
    }
}

/// The `--json` form of an answer: pretty JSON, keys in the documented order, newline-terminated.
pub fn json(answer: &Value) -> String {
    serde_json::to_string_pretty(&Ordered(answer)).expect("JSON values serialise") + "\n"
}

/// Renders the answer to `request` for a person.
pub fn render(request: &Request, answer: &Value) -> String {
    match request {
        Request::Cursors { .. } => {
            let rows: Vec<_> = items(answer, "devices")
                .iter()
                .map(|d| {
                    cells(
                        d,
                        &[
                            "device",
                            "resource",
                            "acked_upto",
                            "unread",
                            "pending",
                            "online",
                            "last_seen",
                        ],
                    )
                })
                .collect();
            format!(
                "user {}  head {}\n{}",
                text(&answer["user"]),
                text(&answer["head"]),
                table(
                    &[
                        "DEVICE",
                        "RESOURCE",
                        "ACKED_UPTO",
                        "UNREAD",
                        "PENDING",
                        "ONLINE",
                        "LAST_SEEN"
                    ],
                    &rows
                )
            )
        }
        Request::Unread { .. } => {
            let rows: Vec<_> = items(answer, "messages")
                .iter()
                .map(|m| cells(m, &["seq", "time", "from", "id", "body"]))
                .collect();
            format!(
                "user {}  device {}  unread {}\n{}",
                text(&answer["user"]),
                text(&answer["device"]),
                text(&answer["unread"]),
                table(&["SEQ", "TIME", "FROM", "ID", "BODY"], &rows)
            )
        }
        Request::Log { .. } => {
            let rows: Vec<_> = items(answer, "messages")
                .iter()
                .map(|m| {
                    let mut row = cells(m, &["seq", "time", "from", "id", "receipt"]);
                    let devices: Vec<String> = items(m, "devices")
                        .iter()
                        .map(|d| format!("{}={}", text(&d["device"]), text(&d["state"])))
                        .collect();
                    row.push(if devices.is_empty() {
                        "-".into()
                    } else {
                        devices.join(" ")
                    });
                    row.push(text(&m["body"]));
                    row
                })
                .collect();
            format!(
                "user {}  head {}\n{}",
                text(&answer["user"]),
                text(&answer["head"]),
                table(
                    &["SEQ", "TIME", "FROM", "ID", "RECEIPT", "DEVICES", "BODY"],
                    &rows
                )
            )
        }
        Request::Forget { .. } => format!(
            "forgot device {} of {}\n",
            text(&answer["device"]),
            text(&answer["user"])
        ),
        Request::Stats => {
            let order = [
                "service_running",
                "uptime_secs",
                "users",
                "devices",
                "messages",
                "pending_timers",
                "logged",
                "replays",
                "bounces",
                "receipts_accepted",
                "receipts_duplicate",
                "receipts_rejected",
                "store_bytes",
            ];
            let rows: Vec<_> = order
                .iter()
                .map(|k| vec![k.to_string(), text(&answer[*k])])
                .collect();
            table(&["STAT", "VALUE"], &rows)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let out = table(
            &["A", "LONGER"],
            &[
                vec!["wide cell".into(), "x".into()],
                vec!["y".into(), "z".into()],
            ],
        );
        assert_eq!(out, "A          LONGER\nwide cell  x\ny          z\n");
    }

    #[test]
    fn control_characters_are_escaped() {
        let out = table(
            &["ID", "BODY"],
            &[vec![
                text(&Value::from("a\nb")),
                text(&Value::from("\u{1b}[31mred\ttab")),
            ]],
        );
        assert_eq!(out, "ID    BODY\na\\nb  \\u{1b}[31mred\\ttab\n");
    }

    #[test]
    fn json_keys_in_design_order() {
        let answer = serde_json::json!({"devices":[{"last_seen":"t","device":"phone","zzz":1,"acked_upto":3}],"head":3,"user":"u"});
        assert_eq!(
            json(&answer),
            "{\n  \"user\": \"u\",\n  \"head\": 3,\n  \"devices\": [\n    {\n      \"device\": \"phone\",\n      \"acked_upto\": 3,\n      \"last_seen\": \"t\",\n      \"zzz\": 1\n    }\n  ]\n}\n"
        );
    }

    #[test]
    fn cursors_table() {
        let answer = serde_json::json!({"user":"bob@localhost","head":3,"devices":[
            {"device":"phone","resource":"phone","acked_upto":3,"unread":0,"pending":0,"online":true,"last_seen":"2026-11-25T08:00:00.000Z"}]});
        let out = render(
            &Request::Cursors {
                jid: "bob@localhost".into(),
            },
            &answer,
        );
        assert_eq!(
            out,
            "user bob@localhost  head 3\n\
             DEVICE  RESOURCE  ACKED_UPTO  UNREAD  PENDING  ONLINE  LAST_SEEN\n\
             phone   phone     3           0       0        yes     2026-11-25T08:00:00.000Z\n"
        );
    }
}
