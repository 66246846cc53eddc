//! Error messages name their own step only; the cause is the `source`. Whoever shows an error
//! to a person shows the whole chain once, through [`Chain`].

use std::fmt;

/// Displays an error and its sources, outermost first: `a: b: c`.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}")]
    struct Read {
        path: &'static str,
        source: std::io::Error,
    }

    #[test]
    fn shows_each_cause_once_outermost_first() {
        let error = Read {
            path: "/etc/mig/migd.toml",
            source: std::io::Error::other("permission denied"),
        };
        assert_eq!(
            Chain(&error).to_string(),
            "cannot read /etc/mig/migd.toml: permission denied"
        );
    }
}
