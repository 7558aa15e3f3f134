//! Text output helpers shared by the commands: tables, durations, times.

use comfy_table::{Cell, CellAlignment, Row};

/// A table as every command prints it: a header line of capitals, then one line per row,
/// columns two spaces apart and as wide as their widest cell, no borders. The same on a
/// terminal and into a pipe, so a script (and the tests) can pick a row by its first
/// column and split it on runs of spaces.
pub(super) struct Table {
    inner: comfy_table::Table,
}

impl Table {
    /// A table with these column headers.
    pub(super) fn new<const N: usize>(header: [&str; N]) -> Self {
        let mut t = Self::bare();
        t.inner.set_header(header);
        t
    }

    /// A table without a header line (`key  value` lists).
    pub(super) fn bare() -> Self {
        let mut inner = comfy_table::Table::new();
        // NOTHING: no borders, no lines; columns are separated by padding alone.
        inner
            .load_style(comfy_table::presets::NOTHING)
            .set_content_arrangement(comfy_table::ContentArrangement::Disabled);
        Self { inner }
    }

    /// Right-aligns column `index` (numbers). Default is left.
    pub(super) fn right(&mut self, index: usize) -> &mut Self {
        if let Some(c) = self.inner.column_mut(index) {
            c.set_cell_alignment(CellAlignment::Right);
        }
        self
    }

    /// Adds one row.
    pub(super) fn row<T: Into<Cell>>(&mut self, cells: impl IntoIterator<Item = T>) -> &mut Self {
        self.inner.add_row(Row::from(
            cells.into_iter().map(Into::into).collect::<Vec<Cell>>(),
        ));
        self
    }

    /// The table as text, each line without trailing spaces, ending in a newline.
    pub(super) fn render(&mut self) -> String {
        let last = self.inner.column_count().saturating_sub(1);
        for c in self.inner.column_iter_mut() {
            // Two spaces after every column but the last, none before any.
            c.set_padding((0, if c.index == last { 0 } else { 2 }));
        }
        let mut text = self.inner.trim_fmt();
        text.push('\n');
        text
    }

    /// Prints the table to stdout.
    pub(super) fn print(&mut self) {
        print!("{}", self.render());
    }
}

/// A duration for people: `45s`, `12m`, `2h`, `1h30m` (rounded to the minute, so a TTL
/// of 2h read a second later still says 2h).
pub(super) fn human_secs(secs: i64) -> String {
    let s = secs.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let minutes = (s + 30) / 60;
    match (minutes / 60, minutes % 60) {
        (0, m) => format!("{m}m"),
        (h, 0) => format!("{h}h"),
        (h, m) => format!("{h}h{m}m"),
    }
}

pub(super) fn ago(unix: i64) -> String {
    let secs = (crate::store::now_unix() - unix).max(0);
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::{human_secs, Table};

    #[test]
    fn tables_are_columns_two_spaces_apart_without_borders() {
        let mut t = Table::new(["NAME", "DEVICES", "NOTE"]);
        t.right(1);
        t.row(["lobby", "3", "latest"]);
        t.row(["a-much-longer-name", "120", ""]);
        assert_eq!(
            t.render(),
            "NAME                DEVICES  NOTE\n\
             lobby                     3  latest\n\
             a-much-longer-name      120\n"
        );
        // A header alone is still printed (an empty list says what it would hold).
        assert_eq!(Table::new(["ID", "ROLE"]).render(), "ID  ROLE\n");
        let mut kv = Table::bare();
        kv.row(["fleet", "lobby"]).row(["created_at", "1"]);
        assert_eq!(kv.render(), "fleet       lobby\ncreated_at  1\n");
    }

    #[test]
    fn durations_round_to_the_minute() {
        assert_eq!(human_secs(7199), "2h");
        assert_eq!(human_secs(7200), "2h");
        assert_eq!(human_secs(5400), "1h30m");
        assert_eq!(human_secs(86_399), "24h");
        assert_eq!(human_secs(600), "10m");
        assert_eq!(human_secs(59), "59s");
        assert_eq!(human_secs(-5), "0s");
    }
}
