"""The operations console at /console/ (docs/console.md): sign-in, sessions, pages and their assets."""
