//! The entity-relationship diagram of a model, drawn as SVG on the server: entities as boxes with their key
//! attributes, relationships as lines between them with their cardinalities at each end. Boxes are laid out
//! on a grid, grouped by container. The SVG keeps its natural size (12-pixel text) in a frame that scrolls,
//! so a model of a hundred entities stays legible, on a phone too; the page's script adds zoom; the diagram
//! can show one container at a time, and draws `MAX_BOXES` entities at most.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::html::{entity_keys, esc};
use crate::model::{Entity, Model};

const BOX_WIDTH: i64 = 220;
const TITLE_HEIGHT: i64 = 26;
const ROW_HEIGHT: i64 = 17;
const GAP_X: i64 = 80;
const GAP_Y: i64 = 60;
/// Attributes shown per box (primary keys and required ones first); the rest are counted.
const ROWS_SHOWN: usize = 8;
/// Characters of a name shown in a box before it is cut.
const NAME_CHARS: usize = 28;
/// Entities drawn at most: past this a diagram is a wall of boxes, and the page's size grows with it.
pub(super) const MAX_BOXES: usize = 200;

/// The diagram of `model`, of the entities of `container` only when given.
/// `href` gives the link of an entity's box from the entity and its anchor key.
pub(super) fn svg(
    model: &Model,
    container: Option<&str>,
    href: &dyn Fn(&Entity, &str) -> String,
) -> String {
    let keys = entity_keys(&model.entities);
    let chosen: Vec<(&Entity, &str)> = model
        .entities
        .iter()
        .zip(keys.iter().map(String::as_str))
        .filter(|(e, _)| container.is_none_or(|c| e.container.as_deref() == Some(c)))
        .collect();
    if chosen.is_empty() {
        return "<p class=\"muted\">No entities to draw.</p>".to_string();
    }
    let mut out = String::new();
    if chosen.len() > MAX_BOXES {
        let _ = write!(
            out,
            "<p class=\"muted\">The first {MAX_BOXES} of {} entities are drawn{}.</p>",
            chosen.len(),
            if container.is_none() && several_containers(model) {
                "; choose a container to draw its entities"
            } else {
                ""
            }
        );
    }
    let (entities, keys): (Vec<&Entity>, Vec<&str>) = chosen.into_iter().take(MAX_BOXES).unzip();
    let mut order: Vec<usize> = (0..entities.len()).collect();
    // Grouped by container, then in the model's order.
    order.sort_by_key(|&i| (entities[i].container.clone().unwrap_or_default(), i));
    let columns = (entities.len() as f64).sqrt().ceil().max(1.0) as usize;
    let heights: Vec<i64> = entities.iter().map(|e| box_height(e)).collect();
    // Each grid row is as tall as its tallest box.
    let mut row_heights = vec![0i64; order.len().div_ceil(columns)];
    for (slot, &i) in order.iter().enumerate() {
        let row = slot / columns;
        row_heights[row] = row_heights[row].max(heights[i]);
    }
    let mut positions: HashMap<usize, (i64, i64)> = HashMap::new();
    let mut y = 20;
    for (row, height) in row_heights.iter().enumerate() {
        for col in 0..columns {
            let Some(&i) = order.get(row * columns + col) else {
                break;
            };
            positions.insert(i, (20 + col as i64 * (BOX_WIDTH + GAP_X), y));
        }
        y += height + GAP_Y;
    }
    let width = 20 + columns as i64 * (BOX_WIDTH + GAP_X);
    let height = y;
    // A relationship names its entities: the first of a name is the one it joins.
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    for (i, e) in entities.iter().enumerate() {
        by_name.entry(e.name.as_str()).or_insert(i);
    }
    let _ = write!(
        out,
        "<svg class=\"diagram\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {width} {height}\" \
         width=\"{width}\" height=\"{height}\" role=\"img\" aria-label=\"Entity-relationship diagram\">"
    );
    // Relationships first, so boxes cover the lines' ends.
    out.push_str("<g class=\"relationships\">");
    for r in &model.relationships {
        let ends = (r.parent_entity.as_deref(), r.child_entity.as_deref());
        let (Some(parent), Some(child)) = ends else {
            continue;
        };
        let (Some(&p), Some(&c)) = (by_name.get(parent), by_name.get(child)) else {
            continue;
        };
        let centre = |i: usize| {
            let (x, y) = positions[&i];
            (x + BOX_WIDTH / 2, y + heights[i] / 2)
        };
        let ((x1, y1), (x2, y2)) = (centre(p), centre(c));
        let label = r.name.as_deref().unwrap_or("");
        let _ = write!(
            out,
            "<g class=\"relationship\"><title>{}</title><line x1=\"{x1}\" y1=\"{y1}\" x2=\"{x2}\" y2=\"{y2}\"/>",
            esc(&format!("{label} {parent} → {child}"))
        );
        // Cardinalities a quarter of the way from each end.
        for (card, (ax, ay), (bx, by)) in [
            (r.parent_cardinality.as_deref(), (x1, y1), (x2, y2)),
            (r.child_cardinality.as_deref(), (x2, y2), (x1, y1)),
        ] {
            if let Some(card) = card.filter(|c| !c.is_empty()) {
                let (tx, ty) = (ax + (bx - ax) / 4, ay + (by - ay) / 4);
                let _ = write!(
                    out,
                    "<text class=\"cardinality\" x=\"{tx}\" y=\"{ty}\">{}</text>",
                    esc(&cut(card, 8))
                );
            }
        }
        out.push_str("</g>");
    }
    out.push_str("</g>");
    for (i, e) in entities.iter().enumerate() {
        let (x, y) = positions[&i];
        let h = heights[i];
        let _ = write!(
            out,
            "<a href=\"{}\"><g class=\"entity\" data-name=\"{}\"><title>{}</title>\
             <rect x=\"{x}\" y=\"{y}\" width=\"{BOX_WIDTH}\" height=\"{h}\" rx=\"4\"/>\
             <rect class=\"head\" x=\"{x}\" y=\"{y}\" width=\"{BOX_WIDTH}\" height=\"{TITLE_HEIGHT}\" rx=\"4\"/>\
             <text class=\"name\" x=\"{}\" y=\"{}\">{}</text>",
            href(e, keys[i]),
            esc(&e.name),
            esc(&e.name),
            x + 8,
            y + 18,
            esc(&cut(&e.name, NAME_CHARS)),
        );
        let (shown, hidden) = key_attributes(e);
        for (row, a) in shown.iter().enumerate() {
            let marks = match (a.primary_key, a.required) {
                (true, _) => "PK ",
                (false, true) => "* ",
                _ => "",
            };
            let ty = a.data_type.as_deref().unwrap_or("");
            let _ = write!(
                out,
                "<text class=\"attr\" x=\"{}\" y=\"{}\">{}{}<tspan class=\"type\"> {}</tspan></text>",
                x + 8,
                y + TITLE_HEIGHT + 14 + row as i64 * ROW_HEIGHT,
                esc(marks),
                esc(&cut(&a.name, 20)),
                esc(&cut(ty, 12)),
            );
        }
        if hidden > 0 {
            let _ = write!(
                out,
                "<text class=\"more\" x=\"{}\" y=\"{}\">+{hidden} more</text>",
                x + 8,
                y + TITLE_HEIGHT + 14 + shown.len() as i64 * ROW_HEIGHT,
            );
        }
        out.push_str("</g></a>");
    }
    out.push_str("</svg>");
    out
}

fn several_containers(model: &Model) -> bool {
    let mut names = model.entities.iter().filter_map(|e| e.container.as_deref());
    names
        .next()
        .is_some_and(|first| names.any(|other| other != first))
}

/// The top-level attributes a box shows (primary keys, then required ones, then the rest, up to
/// `ROWS_SHOWN`), and how many it leaves out.
fn key_attributes(e: &Entity) -> (Vec<&crate::model::Attribute>, usize) {
    let mut top: Vec<&crate::model::Attribute> =
        e.attributes.iter().filter(|a| a.depth == 0).collect();
    let total = top.len();
    top.sort_by_key(|a| (!a.primary_key, !a.required));
    top.truncate(ROWS_SHOWN);
    let hidden = total - top.len();
    (top, hidden)
}

fn box_height(e: &Entity) -> i64 {
    let (shown, hidden) = key_attributes(e);
    let rows = shown.len() + usize::from(hidden > 0);
    TITLE_HEIGHT + 8 + rows as i64 * ROW_HEIGHT
}

/// `text` cut to `max` characters, with an ellipsis when cut.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
    s.push('…');
    s
}
