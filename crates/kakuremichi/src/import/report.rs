//! What the import prints: one table row per ingress rule (what became of it and why), then a
//! one-line summary. Plain text with aligned columns, readable in a terminal and in a CI log.

use super::cloudflared::Step;
use std::fmt;

/// What became of one rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Created {
        target: String,
        notes: Vec<String>,
    },
    /// `--dry-run`: what a real run would create.
    WouldCreate {
        target: String,
        notes: Vec<String>,
    },
    Skipped(String),
    Unsupported(String),
    Failed(String),
}

pub struct Row {
    pub step: Step,
    pub outcome: Outcome,
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Created { .. } => "created",
            Outcome::WouldCreate { .. } => "would create",
            Outcome::Skipped(_) => "skipped",
            Outcome::Unsupported(_) => "unsupported",
            Outcome::Failed(_) => "failed",
        }
    }

    fn detail(&self) -> String {
        match self {
            Outcome::Created { target, notes } | Outcome::WouldCreate { target, notes } => {
                std::iter::once(format!("-> {target}"))
                    .chain(notes.iter().cloned())
                    .collect::<Vec<_>>()
                    .join("; ")
            }
            Outcome::Skipped(why) | Outcome::Unsupported(why) | Outcome::Failed(why) => why.clone(),
        }
    }
}

/// The table: RULE, HOSTNAME, SERVICE, RESULT, DETAIL (the last column unpadded).
pub fn table(rows: &[Row]) -> String {
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            let host = if r.step.hostname.is_empty() {
                "(every host)".to_string()
            } else {
                r.step.hostname.clone()
            };
            [
                r.step.rule.to_string(),
                host,
                r.step.service.clone(),
                r.outcome.label().to_string(),
                r.outcome.detail(),
            ]
        })
        .collect();
    let header = ["RULE", "HOSTNAME", "SERVICE", "RESULT", "DETAIL"].map(str::to_string);
    let mut widths = [0usize; 4];
    for row in std::iter::once(&header).chain(&cells) {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&cells) {
        let mut line = String::new();
        for (cell, w) in row.iter().zip(widths) {
            line.push_str(&format!("{cell:<w$}  "));
        }
        line.push_str(&row[4]);
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// How many rules ended each way.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub created: usize,
    pub would_create: usize,
    pub skipped: usize,
    pub unsupported: usize,
    pub failed: usize,
    /// Whether nothing was changed (`--dry-run`): the counts say what would be created.
    pub dry_run: bool,
}

impl Summary {
    pub fn of(rows: &[Row], dry_run: bool) -> Summary {
        let mut s = Summary {
            dry_run,
            ..Summary::default()
        };
        for row in rows {
            match row.outcome {
                Outcome::Created { .. } => s.created += 1,
                Outcome::WouldCreate { .. } => s.would_create += 1,
                Outcome::Skipped(_) => s.skipped += 1,
                Outcome::Unsupported(_) => s.unsupported += 1,
                Outcome::Failed(_) => s.failed += 1,
            }
        }
        s
    }

    /// Rules whose hostname is not served by kakuremichi after this run (exit status 1).
    pub fn not_imported(&self) -> usize {
        self.unsupported + self.failed
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dry_run {
            write!(f, "{} would be created, ", self.would_create)?;
        } else {
            write!(f, "{} created, ", self.created)?;
        }
        write!(
            f,
            "{} skipped, {} unsupported, {} failed",
            self.skipped, self.unsupported, self.failed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::cloudflared::Action;

    fn row(rule: usize, hostname: &str, service: &str, outcome: Outcome) -> Row {
        Row {
            step: Step {
                rule,
                hostname: hostname.into(),
                service: service.into(),
                action: Action::Skip(String::new()),
            },
            outcome,
        }
    }

    #[test]
    fn the_table_aligns_columns_and_the_summary_counts_each_outcome() {
        let rows = [
            row(
                1,
                "app.example.com",
                "http://localhost:8000",
                Outcome::Created {
                    target: "localhost:8000".into(),
                    notes: vec!["originRequest.connectTimeout ignored: x".into()],
                },
            ),
            row(
                2,
                "",
                "http_status:404",
                Outcome::Skipped("not needed".into()),
            ),
            row(
                3,
                "db.example.com",
                "tcp://db:5432",
                Outcome::Unsupported("raw TCP".into()),
            ),
        ];
        let table = table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0]
            .starts_with("RULE  HOSTNAME         SERVICE                RESULT       DETAIL"));
        assert_eq!(
            lines[1],
            "1     app.example.com  http://localhost:8000  created      -> localhost:8000; originRequest.connectTimeout ignored: x"
        );
        assert!(lines[2]
            .starts_with("2     (every host)     http_status:404        skipped      not needed"));
        assert!(lines[3].ends_with("unsupported  raw TCP"));
        let summary = Summary::of(&rows, false);
        assert_eq!(summary.not_imported(), 1);
        assert_eq!(
            summary.to_string(),
            "1 created, 1 skipped, 1 unsupported, 0 failed"
        );
    }

    #[test]
    fn a_dry_run_counts_what_would_be_created() {
        let rows = [row(
            1,
            "a.example.com",
            "http://x:1",
            Outcome::WouldCreate {
                target: "x:1".into(),
                notes: vec![],
            },
        )];
        assert_eq!(
            Summary::of(&rows, true).to_string(),
            "1 would be created, 0 skipped, 0 unsupported, 0 failed"
        );
        assert!(table(&rows).contains("would create  -> x:1"));
    }
}
