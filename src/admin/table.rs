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

/// The per-conversation table of `conversations` (and under the devices of `cursors`).
fn conversation_table(answer: &Value) -> String {
    let rows: Vec<_> = items(answer, "conversations")
        .iter()
        .map(|c| cells(c, &["peer", "unread", "read_upto", "last_seq", "last_time"]))
        .collect();
    table(
        &["PEER", "UNREAD", "READ_UPTO", "LAST_SEQ", "LAST_TIME"],
        &rows,
    )
}

fn conversations(answer: &Value) -> String {
    format!(
        "user {}\n{}",
        text(&answer["user"]),
        conversation_table(answer)
    )
}

/// `--json` output. Keys keep the order of the views' fields (serde_json's `preserve_order`),
/// which is the order `docs/cli.md` documents.
pub fn json(answer: &Value) -> String {
    serde_json::to_string_pretty(answer).expect("JSON values serialise") + "\n"
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
            ) + &if items(answer, "conversations").is_empty() {
                String::new()
            } else {
                format!("\n{}", conversation_table(answer))
            }
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
        Request::Conversations { .. } => conversations(answer),
        Request::Forget { .. } => format!(
            "forgot device {} of {}\n",
            text(&answer["device"]),
            text(&answer["user"])
        ),
        Request::Purge { .. } => format!(
            "purged {}: {} messages, {} devices, {} timers\n",
            text(&answer["user"]),
            text(&answer["messages"]),
            text(&answer["devices"]),
            text(&answer["timers"])
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
                "messages_deleted",
                "devices_expired",
                "replays_truncated",
                "timers_refused",
                "given_back",
                "device_key_merges",
                "users_purged",
                "devices_evicted",
                "log_limit_given_back",
                "sent_not_logged",
                "store_bytes",
                "stanzas_skipped",
                "warnings_suppressed",
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
        use crate::engine::query::{DeviceCursor, UserCursors};
        let view = UserCursors {
            user: "u".into(),
            head: 3,
            devices: vec![DeviceCursor {
                device: "phone".into(),
                resource: "r".into(),
                acked_upto: 3,
                unread: 0,
                pending: 0,
                online: true,
                last_seen: "t".into(),
            }],
            conversations: vec![],
        };
        assert_eq!(
            json(&serde_json::to_value(&view).unwrap()),
            "{\n  \"user\": \"u\",\n  \"head\": 3,\n  \"devices\": [\n    {\n      \"device\": \"phone\",\n      \"resource\": \"r\",\n      \"acked_upto\": 3,\n      \"unread\": 0,\n      \"pending\": 0,\n      \"online\": true,\n      \"last_seen\": \"t\"\n    }\n  ],\n  \"conversations\": []\n}\n"
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
