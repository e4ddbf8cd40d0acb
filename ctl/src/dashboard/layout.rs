//! The dependency graph of a phase laid out in layers: each story one layer right of its
//! furthest dependency (longest-path layering), stories in a layer ordered by the mean position
//! of their neighbours (barycentric sweeps) so that edges cross less. Dependencies on stories of
//! other phases become reference nodes in a first column of their own. Pure: the page only
//! draws what this decides.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

/// Node size and the gaps between them, in SVG units (the page draws at these sizes).
pub const NODE_W: u32 = 200;
pub const NODE_H: u32 = 54;
const GAP_X: u32 = 70;
const GAP_Y: u32 = 14;
/// Down-and-up sweeps of the barycentric ordering; more gains little on phase-sized graphs.
const SWEEPS: usize = 4;

#[derive(Debug, Serialize, PartialEq)]
pub struct Layout {
    pub nodes: Vec<Placed>,
    /// (dependency, dependent) by node index.
    pub edges: Vec<(usize, usize)>,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Placed {
    pub id: String,
    pub x: u32,
    pub y: u32,
    /// A story of another phase that a story of this one depends on.
    pub external: bool,
}

/// `stories`: each story id with its dependencies, in id order.
pub fn layout(stories: &[(&str, &[String])]) -> Layout {
    let own: HashMap<&str, usize> = stories.iter().enumerate().map(|(i, (id, _))| (*id, i)).collect();
    let external: BTreeSet<&str> =
        stories.iter().flat_map(|(_, deps)| deps.iter()).map(String::as_str).filter(|d| !own.contains_key(d)).collect();
    let ids: Vec<&str> = external.iter().copied().chain(stories.iter().map(|(id, _)| *id)).collect();
    let index: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let mut edges = Vec::new();
    for (id, deps) in stories {
        for dep in deps.iter() {
            edges.push((index[dep.as_str()], index[id]));
        }
    }
    let first = usize::from(!external.is_empty());
    let layers = layers(ids.len(), external.len(), first, &edges);
    let rows = order(&layers, &edges);
    let mut nodes: Vec<Placed> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| Placed { id: id.to_string(), x: 0, y: 0, external: i < external.len() })
        .collect();
    let mut height = 0;
    for (layer, members) in rows.iter().enumerate() {
        for (row, &node) in members.iter().enumerate() {
            nodes[node].x = layer as u32 * (NODE_W + GAP_X);
            nodes[node].y = row as u32 * (NODE_H + GAP_Y);
        }
        height = height.max(members.len() as u32 * (NODE_H + GAP_Y));
    }
    let width = rows.len() as u32 * (NODE_W + GAP_X);
    Layout { nodes, edges, width: width.saturating_sub(GAP_X), height: height.saturating_sub(GAP_Y) }
}

/// Longest-path layers: references in layer 0, a story with no dependency in `first`, any
/// other one right of its furthest dependency. A cycle (which `validate` refuses) cannot loop:
/// each story's layer is settled once, a story met again while open counts as layer `first`.
fn layers(count: usize, externals: usize, first: usize, edges: &[(usize, usize)]) -> Vec<usize> {
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); count];
    for &(from, to) in edges {
        deps[to].push(from);
    }
    let mut layer: Vec<Option<usize>> = (0..count).map(|i| (i < externals).then_some(0)).collect();
    let mut open = vec![false; count];
    for start in externals..count {
        // An explicit stack: a chain of 1,000 stories must not overflow the thread's stack.
        let mut stack = vec![start];
        while let Some(&node) = stack.last() {
            if layer[node].is_some() {
                stack.pop();
                continue;
            }
            open[node] = true;
            let pending: Vec<usize> = deps[node].iter().copied().filter(|d| layer[*d].is_none() && !open[*d]).collect();
            if pending.is_empty() {
                let furthest = deps[node].iter().filter_map(|d| layer[*d]).map(|l| l + 1).max();
                layer[node] = Some(furthest.unwrap_or(first).max(first));
                open[node] = false;
                stack.pop();
            } else {
                stack.extend(pending);
            }
        }
    }
    layer.into_iter().map(|l| l.unwrap_or(first)).collect()
}

/// The nodes of each layer, top to bottom, after the barycentric sweeps.
fn order(layers: &[usize], edges: &[(usize, usize)]) -> Vec<Vec<usize>> {
    let mut rows: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (node, layer) in layers.iter().enumerate() {
        rows.entry(*layer).or_default().push(node);
    }
    let mut rows: Vec<Vec<usize>> = rows.into_values().collect();
    let mut neighbours: Vec<(Vec<usize>, Vec<usize>)> = vec![(Vec::new(), Vec::new()); layers.len()];
    for &(from, to) in edges {
        neighbours[to].0.push(from);
        neighbours[from].1.push(to);
    }
    let mut position = vec![0.0f64; layers.len()];
    let place = |rows: &Vec<Vec<usize>>, position: &mut Vec<f64>| {
        for members in rows {
            for (row, &node) in members.iter().enumerate() {
                position[node] = row as f64;
            }
        }
    };
    place(&rows, &mut position);
    for sweep in 0..SWEEPS * 2 {
        let downward = sweep % 2 == 0;
        let layer_order: Vec<usize> =
            if downward { (1..rows.len()).collect() } else { (0..rows.len()).rev().collect() };
        for l in layer_order {
            let key = |node: usize| {
                let side = if downward { &neighbours[node].0 } else { &neighbours[node].1 };
                match side.len() {
                    0 => position[node],
                    n => side.iter().map(|m| position[*m]).sum::<f64>() / n as f64,
                }
            };
            let mut keyed: Vec<(f64, usize)> = rows[l].iter().map(|&n| (key(n), n)).collect();
            // Stable on equal keys: stories keep their id order where the graph says nothing.
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
            rows[l] = keyed.into_iter().map(|(_, n)| n).collect();
            for (row, &node) in rows[l].iter().enumerate() {
                position[node] = row as f64;
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn at<'a>(layout: &'a Layout, id: &str) -> &'a Placed {
        layout.nodes.iter().find(|n| n.id == id).unwrap()
    }

    #[test]
    fn dependencies_sit_left_of_their_dependents_and_references_come_first() {
        let (a, b, c, d) = (deps(&[]), deps(&["US-P1-001"]), deps(&["US-P1-001", "US-P1-002"]), deps(&["US-P0-009"]));
        let stories = [("US-P1-001", &a[..]), ("US-P1-002", &b[..]), ("US-P1-003", &c[..]), ("US-P1-004", &d[..])];
        let l = layout(&stories);
        assert!(at(&l, "US-P0-009").external);
        assert_eq!(at(&l, "US-P0-009").x, 0);
        assert_eq!(at(&l, "US-P1-001").x, NODE_W + GAP_X);
        assert_eq!(at(&l, "US-P1-004").x, NODE_W + GAP_X);
        assert!(at(&l, "US-P1-002").x > at(&l, "US-P1-001").x);
        assert!(at(&l, "US-P1-003").x > at(&l, "US-P1-002").x);
        assert_eq!(l.edges.len(), 4);
        assert_eq!(l.width, 4 * (NODE_W + GAP_X) - GAP_X);
        // No two nodes share a place.
        let places: BTreeSet<(u32, u32)> = l.nodes.iter().map(|n| (n.x, n.y)).collect();
        assert_eq!(places.len(), l.nodes.len());
    }

    #[test]
    fn barycentric_ordering_puts_a_dependent_beside_its_dependency() {
        // Roots 1 and 2; 3 depends on 2, 4 on 1: the sweeps put 4 above 3, each beside its dependency.
        let (none, on2, on1) = (deps(&[]), deps(&["US-P1-002"]), deps(&["US-P1-001"]));
        let stories =
            [("US-P1-001", &none[..]), ("US-P1-002", &none[..]), ("US-P1-003", &on2[..]), ("US-P1-004", &on1[..])];
        let l = layout(&stories);
        assert!(at(&l, "US-P1-004").y < at(&l, "US-P1-003").y, "{l:?}");
        assert_eq!(at(&l, "US-P1-004").y, at(&l, "US-P1-001").y);
    }

    #[test]
    fn a_long_chain_and_a_cycle_are_laid_out_without_recursion_or_a_hang() {
        let ids: Vec<String> = (1..=5000).map(|i| format!("US-P1-{i:04}")).collect();
        let lists: Vec<Vec<String>> =
            (0..ids.len()).map(|i| if i == 0 { vec![] } else { vec![ids[i - 1].clone()] }).collect();
        let stories: Vec<(&str, &[String])> =
            ids.iter().map(String::as_str).zip(lists.iter().map(Vec::as_slice)).collect();
        let l = layout(&stories);
        assert_eq!(at(&l, "US-P1-5000").x, 4999 * (NODE_W + GAP_X));
        let (a, b) = (deps(&["US-P1-002"]), deps(&["US-P1-001"]));
        let l = layout(&[("US-P1-001", &a[..]), ("US-P1-002", &b[..])]);
        assert_eq!(l.nodes.len(), 2);
    }
}
