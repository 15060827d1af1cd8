//! Einsum, for the equations exporters emit: one or two operands, no letter
//! repeated within a term (no diagonals), `...` only at the front of a term.
//! For y = einsum("A,B->C", a, b), da = einsum("C,B->A", g, b) and
//! db = einsum("C,A->B", g, a), which holds whenever every letter of the
//! operand appears in the output or the other operand (batched matmuls such
//! as "bhqd,bhkd->bhqk", "bij,bjk->bik", "...ij,...jk->...ik"). A letter
//! summed away inside one operand alone, or any other form, is refused with
//! the equation named. One operand: permutations only ("bhqd->bhdq").
//! Operands broadcast along `...` are summed back to their own shapes.

use super::Grads;
use crate::ctx::RuleCtx;
use attrpatch_onnx::error::Result;
use attrpatch_onnx::facts::Dim;
use attrpatch_onnx::pb::{attribute_proto::AttributeType, AttributeProto};

/// One term: whether it starts with `...`, and its letters.
#[derive(Clone, Debug, PartialEq)]
struct Term {
    ellipsis: bool,
    letters: Vec<char>,
}

impl Term {
    fn parse(s: &str) -> Option<Term> {
        let (ellipsis, rest) = match s.strip_prefix("...") {
            Some(r) => (true, r),
            None => (false, s),
        };
        let letters: Vec<char> = rest.chars().collect();
        if letters.iter().any(|c| !c.is_ascii_alphabetic()) {
            return None;
        }
        Some(Term { ellipsis, letters })
    }
    fn render(&self) -> String {
        let mut s = if self.ellipsis { "...".to_string() } else { String::new() };
        s.extend(&self.letters);
        s
    }
    fn has_repeats(&self) -> bool {
        let mut seen = std::collections::HashSet::new();
        !self.letters.iter().all(|c| seen.insert(*c))
    }
}

/// The equation's input terms and output term (the implicit output, when no
/// `->` is given: letters used once, in alphabetical order, `...` first).
fn parse(eq: &str) -> Option<(Vec<Term>, Term)> {
    let eq: String = eq.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l.to_string(), Some(r.to_string())),
        None => (eq.clone(), None),
    };
    let inputs = lhs.split(',').map(Term::parse).collect::<Option<Vec<_>>>()?;
    let out = match rhs {
        Some(r) => Term::parse(&r)?,
        None => {
            let mut letters: Vec<char> = inputs.iter().flat_map(|t| t.letters.iter().copied()).collect();
            letters.sort_unstable();
            let once: Vec<char> =
                letters.iter().copied().filter(|c| letters.iter().filter(|d| *d == c).count() == 1).collect();
            Term { ellipsis: inputs.iter().any(|t| t.ellipsis), letters: once }
        }
    };
    Some((inputs, out))
}

fn equation_attr(eq: &str) -> AttributeProto {
    AttributeProto {
        name: "equation".into(),
        r#type: AttributeType::String as i32,
        s: eq.as_bytes().to_vec(),
        ..Default::default()
    }
}

pub fn einsum(cx: &mut RuleCtx) -> Result<Grads> {
    let g = cx.grad()?;
    let eq = cx.attr_s("equation").unwrap_or_default();
    let refuse = |cx: &RuleCtx, why: &str| {
        cx.err(format!(
            "equation '{eq}': {why}; supported are one- or two-operand equations without repeated letters in a term, \
             whose operands' letters each appear in the output or the other operand (batched matrix products)"
        ))
    };
    let Some((inputs, out)) = parse(&eq) else {
        return Err(refuse(cx, "cannot parse it"));
    };
    if inputs.len() != cx.node.input.len() || inputs.is_empty() || inputs.len() > 2 {
        return Err(refuse(cx, &format!("{} operands", cx.node.input.len())));
    }
    if out.has_repeats() || inputs.iter().any(Term::has_repeats) {
        return Err(refuse(cx, "a letter repeats within a term (a diagonal)"));
    }
    let y = cx.output(0);
    let so = cx.shape(y)?;
    let mut res = vec![];
    for k in 0..inputs.len() {
        if !cx.needs(k) {
            res.push(None);
            continue;
        }
        let target = &inputs[k];
        let other = inputs.get(1 - k).filter(|_| inputs.len() == 2);
        let covered = |c: &char| out.letters.contains(c) || other.is_some_and(|o| o.letters.contains(c));
        if !target.letters.iter().all(covered) {
            return Err(refuse(
                cx,
                &format!("operand {k} ('{}') has a letter summed within it alone", target.render()),
            ));
        }
        if target.ellipsis && !out.ellipsis {
            return Err(refuse(cx, "'...' is summed away"));
        }
        let (equation, operands) = match other {
            Some(o) => (
                format!("{},{}->{}", out.render(), o.render(), target.render()),
                vec![g.clone(), cx.input(1 - k).to_string()],
            ),
            None => {
                if out.letters.len() != target.letters.len() {
                    return Err(refuse(cx, "a one-operand equation that is not a permutation"));
                }
                (format!("{}->{}", out.render(), target.render()), vec![g.clone()])
            }
        };
        let refs: Vec<&str> = operands.iter().map(|s| s.as_str()).collect();
        let full = cx.b.node("Einsum", &refs, vec![equation_attr(&equation)]);
        // The result has the broadcast `...` dims of the output: sum back to the operand's.
        let x = cx.input(k);
        let sx = cx.shape(x)?;
        let n_named = target.letters.len();
        let n_ell_out = so.len() - out.letters.len();
        let mut sfull: Vec<Dim> = if target.ellipsis { so[..n_ell_out].to_vec() } else { vec![] };
        sfull.extend_from_slice(&sx[sx.len() - n_named..]);
        res.push(Some(cx.reduce_shape_to(&full, &sfull, x)?));
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_explicit_implicit_and_ellipsis() {
        let (i, o) = parse("bhqd, bhkd -> bhqk").unwrap();
        assert_eq!(i[0].render(), "bhqd");
        assert_eq!(o.render(), "bhqk");
        let (_, o) = parse("ij,jk").unwrap();
        assert_eq!(o.render(), "ik");
        let (i, o) = parse("...ij,...jk->...ik").unwrap();
        assert!(i[0].ellipsis && o.ellipsis && i[1].letters == vec!['j', 'k']);
        assert!(parse("i1,j->ij").is_none());
        assert!(parse("ii->i").unwrap().0[0].has_repeats());
    }
}
