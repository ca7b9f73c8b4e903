//! The built-in synthetic corpus: small algorithmic tasks written as text, one per line,
//! `task prompt=answer\n`. It needs no files, has learnable structure at every scale (the format
//! is learnt in tens of steps, the answers need real computation), and its answers can be scored
//! exactly by an evaluator that reads the prompt up to `=`.
//!
//! Tasks (chosen so that more depth plausibly helps: each needs several sequential steps):
//! - `add`: multi-digit addition, `add 4721+389=5110`
//! - `rev`: reverse a string, `rev kqzt=tzqk`
//! - `copy`: copy a string, `copy kqzt=kqzt`
//! - `sort`: sort digits, `sort 52913=12359`
//! - `bal`: are the brackets balanced, `bal ([]{})=yes`
//! - `perm`: compose two permutations of 0..n, `(p*q)[i] = p[q[i]]`, `perm 2031*1302=0321`

use crate::rng::Rng;

pub const TASKS: [&str; 6] = ["add", "rev", "copy", "sort", "bal", "perm"];

fn letters(rng: &mut Rng, lo: u64, hi: u64) -> String {
    let n = rng.range(lo, hi);
    (0..n).map(|_| (b'a' + rng.below(26) as u8) as char).collect()
}

fn digits(rng: &mut Rng, lo: u64, hi: u64) -> String {
    let n = rng.range(lo, hi);
    (0..n).map(|_| (b'0' + rng.below(10) as u8) as char).collect()
}

fn permutation(rng: &mut Rng, n: usize) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut p);
    p
}

fn balanced(s: &str) -> bool {
    let mut stack = Vec::new();
    for c in s.chars() {
        match c {
            '(' | '[' | '{' => stack.push(c),
            ')' | ']' | '}' => {
                let open = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if stack.pop() != Some(open) {
                    return false;
                }
            }
            _ => {}
        }
    }
    stack.is_empty()
}

fn brackets(rng: &mut Rng) -> String {
    // Half the time build a balanced string, then maybe corrupt one character.
    let pairs = [('(', ')'), ('[', ']'), ('{', '}')];
    let n = rng.range(1, 5) as usize;
    let mut s = String::new();
    let mut stack = Vec::new();
    while s.len() < 2 * n || !stack.is_empty() {
        if s.len() < 2 * n && (stack.is_empty() || rng.below(2) == 0) {
            let (o, c) = pairs[rng.below(3) as usize];
            s.push(o);
            stack.push(c);
        } else {
            s.push(stack.pop().expect("non-empty"));
        }
    }
    if rng.below(2) == 0 {
        let mut chars: Vec<char> = s.chars().collect();
        let i = rng.below(chars.len() as u64) as usize;
        let all = ['(', ')', '[', ']', '{', '}'];
        chars[i] = all[rng.below(6) as usize];
        s = chars.into_iter().collect();
    }
    s
}

/// One example: (task, prompt, answer). The text line is `{task} {prompt}={answer}\n`.
pub fn example(rng: &mut Rng) -> (&'static str, String, String) {
    let task = TASKS[rng.below(TASKS.len() as u64) as usize];
    let (prompt, answer) = match task {
        "add" => {
            let (na, nb) = (rng.range(1, 4) as u32, rng.range(1, 4) as u32);
            let a = rng.below(10u64.pow(na));
            let b = rng.below(10u64.pow(nb));
            (format!("{a}+{b}"), (a + b).to_string())
        }
        "rev" => {
            let s = letters(rng, 2, 8);
            let r: String = s.chars().rev().collect();
            (s, r)
        }
        "copy" => {
            let s = letters(rng, 2, 8);
            (s.clone(), s)
        }
        "sort" => {
            let s = digits(rng, 2, 8);
            let mut c: Vec<char> = s.chars().collect();
            c.sort_unstable();
            (s, c.into_iter().collect())
        }
        "bal" => {
            let s = brackets(rng);
            let ok = if balanced(&s) { "yes" } else { "no" };
            (s, ok.to_string())
        }
        _ => {
            let n = rng.range(3, 5) as usize;
            let p = permutation(rng, n);
            let q = permutation(rng, n);
            let show = |v: &[usize]| v.iter().map(|d| d.to_string()).collect::<String>();
            let r: Vec<usize> = (0..n).map(|i| p[q[i]]).collect();
            (format!("{}*{}", show(&p), show(&q)), show(&r))
        }
    };
    (task, prompt, answer)
}

/// At least `n_bytes` of corpus text from the stream `seed`.
pub fn generate(seed: u64, n_bytes: usize) -> String {
    let mut rng = Rng::new(seed);
    let mut out = String::with_capacity(n_bytes + 64);
    while out.len() < n_bytes {
        let (task, prompt, answer) = example(&mut rng);
        out.push_str(task);
        out.push(' ');
        out.push_str(&prompt);
        out.push('=');
        out.push_str(&answer);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_correct() {
        let mut rng = Rng::new(5);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let (task, prompt, answer) = example(&mut rng);
            seen.insert(task);
            match task {
                "add" => {
                    let (a, b) = prompt.split_once('+').unwrap();
                    assert_eq!(a.parse::<u64>().unwrap() + b.parse::<u64>().unwrap(), answer.parse::<u64>().unwrap());
                }
                "rev" => assert_eq!(prompt.chars().rev().collect::<String>(), answer),
                "copy" => assert_eq!(prompt, answer),
                "sort" => {
                    assert_eq!(prompt.len(), answer.len());
                    assert!(answer.as_bytes().windows(2).all(|w| w[0] <= w[1]));
                }
                "bal" => assert_eq!(balanced(&prompt), answer == "yes"),
                "perm" => {
                    let (p, q) = prompt.split_once('*').unwrap();
                    let d = |s: &str| s.bytes().map(|b| (b - b'0') as usize).collect::<Vec<_>>();
                    let (p, q, r) = (d(p), d(q), d(&answer));
                    for i in 0..p.len() {
                        assert_eq!(r[i], p[q[i]]);
                    }
                }
                _ => unreachable!(),
            }
        }
        assert_eq!(seen.len(), TASKS.len());
    }

    #[test]
    fn balanced_checker() {
        assert!(balanced("([]{})"));
        assert!(!balanced("([)]"));
        assert!(!balanced("(("));
    }

    #[test]
    fn generation_is_seeded() {
        assert_eq!(generate(1, 1000), generate(1, 1000));
        assert_ne!(generate(1, 1000), generate(2, 1000));
        assert!(generate(1, 1000).len() >= 1000);
    }
}
