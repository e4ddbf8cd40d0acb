//! `status`: phases and stories of one project (or one phase, or one story), or with `--all`
//! every phase the daemon runs or has run, of all projects.

use sticler_proto::{Request, StatusReport};

use super::{phase_number, print_json, Context};
use crate::{render, CmdResult};

/// `status --all`.
pub fn all(ctx: &Context) -> CmdResult {
    // An empty project asks for every project (the request's project field predates `--all`).
    let request = Request::Status { project: String::new(), phase: None, story: None };
    let reports: Vec<StatusReport> = ctx.connect()?.call_expect(request)?;
    if ctx.json {
        print_json(&reports);
    } else if reports.is_empty() {
        println!("nothing to show: sticlerd has not run any phase yet (start one with `sticlerctl start <phase>`)");
    } else {
        let width = render::terminal_width();
        let text: Vec<String> = reports
            .iter()
            .map(|r| {
                let phases: Vec<String> = r.phases.iter().map(|v| render::phase(v, width)).collect();
                format!("{}\n{}", r.project, phases.join("\n"))
            })
            .collect();
        print!("{}", text.join("\n"));
    }
    Ok(0)
}

/// `status [<phase> [<story>]]` of the project of `-C`.
pub fn project(ctx: &Context, phase: Option<&str>, story: Option<&str>) -> CmdResult {
    let project = ctx.project()?;
    let phase = phase.map(phase_number).transpose()?;
    let request = Request::Status { project, phase, story: story.map(str::to_string) };
    let report: StatusReport = ctx.connect()?.call_expect(request)?;
    if ctx.json {
        print_json(&report);
    } else if let (Some(id), Some(view)) = (story, report.phases.first()) {
        if let Some(s) = view.stories.iter().find(|s| s.id == id) {
            print!("{}", render::story(view, s));
        }
    } else if report.phases.is_empty() {
        println!("no phases under {}/phases", report.project);
    } else {
        let width = render::terminal_width();
        let text: Vec<String> = report.phases.iter().map(|v| render::phase(v, width)).collect();
        print!("{}", text.join("\n"));
    }
    Ok(0)
}
