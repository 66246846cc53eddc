//! Statistical disclosure control as NHS England publishes it (SPEC §12): a count of 1 to 7 is
//! suppressed (`*`), every other count is rounded to the nearest 5 (0 stays 0).
//!
//! What it protects: no published cell says "one, two, ... seven people", and a published cell
//! moves only when the true count crosses a rounding boundary. What it does not: two extracts
//! of the same period taken before and after a change can still show it when a cell crosses a
//! boundary (1 → 0, 8 → 7, 13 → 12, ...); see `removal_is_hidden` and docs/operations.md.

/// One published count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Published {
    /// 1 to 7: written `*`.
    Suppressed,
    /// A multiple of 5.
    Rounded(u64),
}

impl std::fmt::Display for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Published::Suppressed => f.write_str("*"),
            Published::Rounded(n) => write!(f, "{n}"),
        }
    }
}

/// What a true count is published as. 5 is odd, so there are no ties: 8 → 10, 12 → 10, 13 → 15.
pub fn publish(count: u64) -> Published {
    match count {
        1..=7 => Published::Suppressed,
        n => Published::Rounded(n.saturating_add(2) / 5 * 5),
    }
}

/// Whether taking `removed` notes out of a cell that held `count` leaves its published value
/// unchanged (so two extracts cannot show the removal in this cell).
pub fn removal_is_hidden(count: u64, removed: u64) -> bool {
    removed <= count && publish(count) == publish(count - removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_counts_are_suppressed_and_others_rounded() {
        assert_eq!(publish(0), Published::Rounded(0));
        for n in 1..=7 {
            assert_eq!(publish(n), Published::Suppressed, "{n}");
        }
        assert_eq!(publish(8), Published::Rounded(10));
        assert_eq!(publish(12), Published::Rounded(10));
        assert_eq!(publish(13), Published::Rounded(15));
        assert_eq!(publish(17), Published::Rounded(15));
        assert_eq!(publish(18), Published::Rounded(20));
        assert_eq!(publish(1_002), Published::Rounded(1_000));
        assert_eq!(publish(u64::MAX).to_string().len(), 20);
        assert_eq!(Published::Suppressed.to_string(), "*");
    }

    /// Exactly which single-note removals the control hides: a cell of 2 to 7 (still `*`),
    /// or of 9 or more unless it held 3 more than a multiple of 5 (13 → 12 crosses from 15
    /// to 10). A cell of 1 (`*` → 0) and one of 8 (10 → `*`) show the removal.
    #[test]
    fn which_single_removals_are_hidden() {
        for count in 1..=500u64 {
            let expected = (2..=7).contains(&count) || (count >= 9 && count % 5 != 3);
            assert_eq!(removal_is_hidden(count, 1), expected, "count {count}");
        }
    }
}
