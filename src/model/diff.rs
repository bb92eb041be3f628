//! What changed inside a model between two versions: entities, attributes and relationships added, removed,
//! renamed or changed. Entities and attributes are matched by GUID (falling back to the name, and to the path
//! for attributes), so a rename is a rename and not a removal plus an addition. Pure functions.

use serde::Serialize;

use super::{Attribute, Entity, Model, Relationship};

/// The differences between two versions of one model.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ModelDiff {
    pub entities_added: Vec<String>,
    pub entities_removed: Vec<String>,
    pub entities_renamed: Vec<Renamed>,
    pub attributes_added: Vec<AttributeRef>,
    pub attributes_removed: Vec<AttributeRef>,
    pub attributes_renamed: Vec<AttributeRenamed>,
    pub attributes_changed: Vec<AttributeChanged>,
    pub relationships_added: Vec<String>,
    pub relationships_removed: Vec<String>,
    pub relationships_changed: Vec<RelationshipChanged>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Renamed {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttributeRef {
    pub entity: String,
    pub attribute: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttributeRenamed {
    pub entity: String,
    pub from: String,
    pub to: String,
}

/// One property of an attribute that changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttributeChanged {
    pub entity: String,
    pub attribute: String,
    /// type | required | primary_key | description
    pub field: String,
    pub from: Option<String>,
    pub to: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RelationshipChanged {
    pub relationship: String,
    /// parent | child | parent_cardinality | child_cardinality | type
    pub field: String,
    pub from: Option<String>,
    pub to: Option<String>,
}

impl ModelDiff {
    pub fn is_empty(&self) -> bool {
        *self == ModelDiff::default()
    }
}

fn entity_guid(e: &Entity) -> Option<&str> {
    e.guid.as_deref()
}
fn entity_key(e: &Entity) -> &str {
    &e.name
}
fn attribute_guid(a: &Attribute) -> Option<&str> {
    a.guid.as_deref()
}
fn attribute_key(a: &Attribute) -> &str {
    &a.path
}

/// Index of the item in `new` matching `item`: same GUID, else same key (when the GUID is absent on either).
fn find<T>(
    new: &[T],
    used: &[bool],
    guid: fn(&T) -> Option<&str>,
    key: fn(&T) -> &str,
    item: &T,
) -> Option<usize> {
    let g = guid(item);
    if let Some(g) = g
        && let Some(i) = new
            .iter()
            .enumerate()
            .position(|(i, n)| !used[i] && guid(n) == Some(g))
    {
        return Some(i);
    }
    new.iter().enumerate().position(|(i, n)| {
        !used[i] && key(n) == key(item) && (g.is_none() || guid(n).is_none() || guid(n) == g)
    })
}

/// Compare two versions of a model.
pub fn diff(old: &Model, new: &Model) -> ModelDiff {
    let mut d = ModelDiff::default();
    let mut used = vec![false; new.entities.len()];
    for oe in &old.entities {
        match find(&new.entities, &used, entity_guid, entity_key, oe) {
            None => d.entities_removed.push(oe.name.clone()),
            Some(i) => {
                used[i] = true;
                let ne = &new.entities[i];
                if ne.name != oe.name {
                    d.entities_renamed.push(Renamed {
                        from: oe.name.clone(),
                        to: ne.name.clone(),
                    });
                }
                diff_attributes(&mut d, oe, ne);
            }
        }
    }
    for (i, ne) in new.entities.iter().enumerate() {
        if !used[i] {
            d.entities_added.push(ne.name.clone());
        }
    }
    diff_relationships(&mut d, &old.relationships, &new.relationships);
    d
}

fn diff_attributes(d: &mut ModelDiff, oe: &Entity, ne: &Entity) {
    let mut used = vec![false; ne.attributes.len()];
    for oa in &oe.attributes {
        match find(&ne.attributes, &used, attribute_guid, attribute_key, oa) {
            None => d.attributes_removed.push(AttributeRef {
                entity: ne.name.clone(),
                attribute: oa.path.clone(),
            }),
            Some(i) => {
                used[i] = true;
                let na = &ne.attributes[i];
                if na.path != oa.path {
                    d.attributes_renamed.push(AttributeRenamed {
                        entity: ne.name.clone(),
                        from: oa.path.clone(),
                        to: na.path.clone(),
                    });
                }
                let mut changed = |field: &str, from: Option<String>, to: Option<String>| {
                    if from != to {
                        d.attributes_changed.push(AttributeChanged {
                            entity: ne.name.clone(),
                            attribute: na.path.clone(),
                            field: field.to_string(),
                            from,
                            to,
                        });
                    }
                };
                let ty = |a: &Attribute| match (&a.data_type, &a.mode) {
                    (Some(t), Some(m)) => Some(format!("{t} ({m})")),
                    (Some(t), None) => Some(t.clone()),
                    (None, m) => m.clone(),
                };
                changed("type", ty(oa), ty(na));
                changed(
                    "required",
                    Some(oa.required.to_string()),
                    Some(na.required.to_string()),
                );
                changed(
                    "primary_key",
                    Some(oa.primary_key.to_string()),
                    Some(na.primary_key.to_string()),
                );
                changed(
                    "description",
                    oa.description.clone(),
                    na.description.clone(),
                );
            }
        }
    }
    for (i, na) in ne.attributes.iter().enumerate() {
        if !used[i] {
            d.attributes_added.push(AttributeRef {
                entity: ne.name.clone(),
                attribute: na.path.clone(),
            });
        }
    }
}

/// A relationship's identity: its name, else its ends.
fn rel_key(r: &Relationship) -> String {
    match &r.name {
        Some(n) if !n.is_empty() => n.clone(),
        _ => format!(
            "{} -> {}",
            r.parent_entity.as_deref().unwrap_or("?"),
            r.child_entity.as_deref().unwrap_or("?")
        ),
    }
}

fn diff_relationships(d: &mut ModelDiff, old: &[Relationship], new: &[Relationship]) {
    let mut used = vec![false; new.len()];
    for o in old {
        let k = rel_key(o);
        match new
            .iter()
            .enumerate()
            .position(|(i, n)| !used[i] && rel_key(n) == k)
        {
            None => d.relationships_removed.push(k),
            Some(i) => {
                used[i] = true;
                let n = &new[i];
                let fields = [
                    ("parent", &o.parent_entity, &n.parent_entity),
                    ("child", &o.child_entity, &n.child_entity),
                    (
                        "parent_cardinality",
                        &o.parent_cardinality,
                        &n.parent_cardinality,
                    ),
                    (
                        "child_cardinality",
                        &o.child_cardinality,
                        &n.child_cardinality,
                    ),
                    ("type", &o.relationship_type, &n.relationship_type),
                ];
                for (field, from, to) in fields {
                    if from != to {
                        d.relationships_changed.push(RelationshipChanged {
                            relationship: k.clone(),
                            field: field.to_string(),
                            from: from.clone(),
                            to: to.clone(),
                        });
                    }
                }
            }
        }
    }
    for (i, n) in new.iter().enumerate() {
        if !used[i] {
            d.relationships_added.push(rel_key(n));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Parsed, parse_hackolade};

    fn model(json: &str) -> Model {
        match parse_hackolade(json.as_bytes()) {
            Parsed::Model(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn renames_are_matched_by_guid() {
        let old = model(
            r#"{"modelName":"m","collections":[
                {"GUID":"e1","collectionName":"Customer","properties":[
                    {"GUID":"a1","name":"id","type":"string","primaryKey":true},
                    {"GUID":"a2","name":"mail","type":"string"},
                    {"GUID":"a3","name":"gone","type":"string"}]},
                {"GUID":"e2","collectionName":"Old","properties":[]}],
              "relationships":[{"name":"r1","parentCollection":"e1","childCollection":"e2","childCardinality":"n"}]}"#,
        );
        let new = model(
            r#"{"modelName":"m","collections":[
                {"GUID":"e1","collectionName":"Client","properties":[
                    {"GUID":"a1","name":"id","type":"numeric","primaryKey":true},
                    {"GUID":"a2","name":"email","type":"string","required":true,"description":"where to write"},
                    {"GUID":"a4","name":"added","type":"string"}]},
                {"GUID":"e3","collectionName":"New","properties":[]}],
              "relationships":[{"name":"r1","parentCollection":"e1","childCollection":"e3","childCardinality":"1"}]}"#,
        );
        let d = diff(&old, &new);
        assert_eq!(
            d.entities_renamed,
            vec![Renamed {
                from: "Customer".into(),
                to: "Client".into()
            }]
        );
        assert_eq!(d.entities_removed, vec!["Old"]);
        assert_eq!(d.entities_added, vec!["New"]);
        assert_eq!(
            d.attributes_renamed,
            vec![AttributeRenamed {
                entity: "Client".into(),
                from: "mail".into(),
                to: "email".into()
            }]
        );
        assert_eq!(
            d.attributes_removed,
            vec![AttributeRef {
                entity: "Client".into(),
                attribute: "gone".into()
            }]
        );
        assert_eq!(
            d.attributes_added,
            vec![AttributeRef {
                entity: "Client".into(),
                attribute: "added".into()
            }]
        );
        let fields: Vec<(&str, &str)> = d
            .attributes_changed
            .iter()
            .map(|c| (c.attribute.as_str(), c.field.as_str()))
            .collect();
        assert_eq!(
            fields,
            vec![
                ("id", "type"),
                ("email", "required"),
                ("email", "description")
            ]
        );
        let rel: Vec<&str> = d
            .relationships_changed
            .iter()
            .map(|c| c.field.as_str())
            .collect();
        // The parent entity was renamed, so the relationship names another parent too.
        assert_eq!(rel, vec!["parent", "child", "child_cardinality"]);
        assert!(diff(&new, &new).is_empty());
    }
}
