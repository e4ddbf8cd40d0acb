//! `presets`: the coding agents sticler knows and the exact command each runs. The table is
//! compiled in (from the proto crate), so no daemon is needed.

use crate::CmdResult;

/// The preset table, with the exact command each preset runs (placeholders unexpanded).
pub fn run(json: bool) -> CmdResult {
    let presets = sticler_proto::preset::PRESETS;
    if json {
        super::print_json(&presets);
        return Ok(0);
    }
    for p in presets {
        println!("{}: {}", p.name, p.summary);
        let argv: Vec<String> = p.argv.iter().map(|a| shell_word(a)).collect();
        println!("  command: {}", argv.join(" "));
        println!("  stdin:   {}", if p.stdin == "spec" { "the story's spec.md" } else { "nothing (/dev/null)" });
        println!(
            "  limits:  {}",
            if p.limit_patterns.is_empty() { "-".into() } else { p.limit_patterns.join("  |  ") }
        );
        println!("  note:    {}\n", p.note);
    }
    Ok(0)
}

/// `word` as a shell would need it written.
fn shell_word(word: &str) -> String {
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./{}=:".contains(c)) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}
