//! The embedded default corpus: simple children's stories from a seeded probabilistic grammar written
//! for this project, so `wgslm train` works offline with nothing downloaded.
//!
//! Each story keeps its characters (a name, an animal, matching pronouns) and objects from start to end,
//! and follows an arc — opening, trait, a problem, a friend, dialogue, a resolution, an ending — with
//! enough variety in every slot that a small model has real structure to learn: agreement, quotes,
//! names that recur, and a story shape.

use crate::rng::Rng;

struct Hero {
    name: &'static str,
    he: &'static str,
    his: &'static str,
    him: &'static str,
}

const HEROES: &[Hero] = &[
    Hero { name: "Lily", he: "she", his: "her", him: "her" },
    Hero { name: "Tom", he: "he", his: "his", him: "him" },
    Hero { name: "Mia", he: "she", his: "her", him: "her" },
    Hero { name: "Ben", he: "he", his: "his", him: "him" },
    Hero { name: "Sara", he: "she", his: "her", him: "her" },
    Hero { name: "Max", he: "he", his: "his", him: "him" },
    Hero { name: "Anna", he: "she", his: "her", him: "her" },
    Hero { name: "Sam", he: "he", his: "his", him: "him" },
    Hero { name: "Lucy", he: "she", his: "her", him: "her" },
    Hero { name: "Jack", he: "he", his: "his", him: "him" },
    Hero { name: "Emma", he: "she", his: "her", him: "her" },
    Hero { name: "Leo", he: "he", his: "his", him: "him" },
    Hero { name: "Zoe", he: "she", his: "her", him: "her" },
    Hero { name: "Finn", he: "he", his: "his", him: "him" },
    Hero { name: "Rosa", he: "she", his: "her", him: "her" },
    Hero { name: "Otto", he: "he", his: "his", him: "him" },
];

const ANIMALS: &[&str] = &[
    "bunny", "puppy", "kitten", "bear", "fox", "duck", "mouse", "owl", "frog", "pig", "lamb", "turtle",
    "squirrel", "bird", "goat", "hedgehog", "deer", "otter",
];
const KIND: &[&str] = &[
    "little", "small", "happy", "kind", "brave", "curious", "shy", "silly", "gentle", "clever", "tiny",
    "friendly", "sleepy", "busy",
];
const COLORS: &[&str] =
    &["red", "blue", "green", "yellow", "pink", "purple", "orange", "shiny", "soft", "old"];
const THINGS: &[&str] = &[
    "ball", "kite", "hat", "book", "drum", "boat", "cup", "scarf", "box", "bell", "shell", "blanket", "map",
    "basket", "flute", "wagon",
];
const HOMES: &[&str] = &[
    "in a small house by the river",
    "in a big green forest",
    "near a quiet pond",
    "on a sunny farm",
    "under an old oak tree",
    "in a warm burrow",
    "at the edge of a meadow",
    "in a little town by the sea",
    "on top of a windy hill",
    "in a garden full of flowers",
];
const PLACES: &[&str] = &[
    "the park",
    "the garden",
    "the forest",
    "the beach",
    "the hill",
    "the pond",
    "the barn",
    "the meadow",
    "the river",
    "the market",
    "the big tree",
    "the old bridge",
];
const HOBBIES: &[&str] = &[
    "play in the sun",
    "sing songs",
    "jump in puddles",
    "read books",
    "dance in the grass",
    "draw pictures",
    "collect stones",
    "watch the clouds",
    "climb trees",
    "bake cakes",
    "run very fast",
    "splash in the water",
];
const GOALS: &[(&str, &str)] = &[
    ("climb the tall hill", "the hill was very steep"),
    ("cross the river", "the water was too deep"),
    ("reach the red apples", "the apples were too high"),
    ("fly the kite", "there was no wind"),
    ("build a sand castle", "the waves kept washing it away"),
    ("find the end of the rainbow", "the rainbow kept moving"),
    ("open the heavy door", "the door was stuck"),
    ("win the race", "the other animals were very fast"),
    ("make a new friend", "everyone was too busy"),
    ("bake a cake", "there was no flour in the house"),
];
const SAD: &[&str] = &["sad", "worried", "upset", "lonely", "scared", "grumpy"];
const GLAD: &[&str] = &["happy", "proud", "glad", "excited", "thankful", "joyful"];
const WEATHER: &[&str] = &["rain", "snow", "get dark", "blow hard"];
const HELP: &[&str] = &[
    "worked together",
    "made a plan",
    "tried again and again",
    "asked the wise owl for help",
    "took turns",
    "shared what they had",
    "used a long stick",
    "built a little bridge",
];
const MORALS: &[&str] = &[
    "friends make everything easier",
    "it is good to share",
    "trying again is brave",
    "asking for help is not bad",
    "being kind makes people happy",
    "patience helps a lot",
    "small things can be very special",
    "working together is fun",
];

fn pick<'a, T>(rng: &mut Rng, items: &'a [T]) -> &'a T {
    &items[rng.below(items.len() as u64) as usize]
}

fn cap(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// One story.
pub fn story(rng: &mut Rng) -> String {
    let hero = pick(rng, HEROES);
    let mut friend = pick(rng, HEROES);
    while friend.name == hero.name {
        friend = pick(rng, HEROES);
    }
    let (animal, friend_animal) = (*pick(rng, ANIMALS), *pick(rng, ANIMALS));
    let (kind, kind2) = (*pick(rng, KIND), *pick(rng, KIND));
    let thing = format!("{} {}", pick(rng, COLORS), pick(rng, THINGS));
    let (n, he, his, him) = (hero.name, hero.he, hero.his, hero.him);
    let (f, fhe) = (friend.name, friend.he);
    let a_an = |w: &str| if w.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    let mut s = Vec::new();

    s.push(match rng.below(3) {
        0 => format!("Once upon a time, there was {} {kind} {animal} named {n}.", a_an(kind)),
        1 => format!("{n} was {} {kind} {animal} who lived {}.", a_an(kind), pick(rng, HOMES)),
        _ => format!(
            "One {} morning, {} {kind} {animal} called {n} woke up {}.",
            pick(rng, &["sunny", "cold", "bright", "quiet"]),
            a_an(kind),
            pick(rng, HOMES)
        ),
    });
    s.push(match rng.below(2) {
        0 => format!("{} loved to {}.", cap(he), pick(rng, HOBBIES)),
        _ => format!("{} had {} {thing} that {he} liked very much.", cap(he), a_an(&thing)),
    });

    let (problem, said) = match rng.below(3) {
        0 => {
            let (goal, obstacle) = pick(rng, GOALS);
            s.push(format!("One day, {n} wanted to {goal}. But {obstacle}."));
            (format!("I want to {goal}, but I can not"), "together they did it")
        }
        1 => {
            let (p1, p2) = (pick(rng, PLACES), pick(rng, PLACES));
            s.push(format!(
                "One day, {n} lost {his} {thing}. {} looked in {p1} and in {p2}, but it was not there.",
                cap(he)
            ));
            (format!("I lost my {thing}"), "they found it")
        }
        _ => {
            let w = pick(rng, WEATHER);
            s.push(format!(
                "One day, {n} went to {}. Then it started to {w}, and {n} could not find the way home.",
                pick(rng, PLACES)
            ));
            ("I can not find my way home".to_string(), "they got home safe")
        }
    };
    let sad = pick(rng, SAD);
    s.push(format!(
        "{n} felt {sad}. Then {his} friend {f}, {} {kind2} {friend_animal}, came by.",
        a_an(kind2)
    ));
    s.push(format!("\"Why are you {sad}, {n}?\" asked {f}."));
    s.push(format!("\"{problem},\" said {n}."));
    s.push(match rng.below(3) {
        0 => format!("\"Do not worry. I will help you!\" said {f}."),
        1 => format!("{f} smiled and said, \"Let us do it together.\""),
        _ => format!("\"I know what to do,\" said {f}, and {fhe} took {n} by the hand."),
    });
    s.push(format!("{} {}, and {said}.", cap("they"), pick(rng, HELP)));
    s.push(format!("{n} was so {}. \"Thank you, {f}!\" {he} said.", pick(rng, GLAD)));
    s.push(match rng.below(3) {
        0 => format!("From that day on, {n} and {f} were best friends."),
        1 => format!("{n} learned that {}.", pick(rng, MORALS)),
        _ => format!(
            "That night, {n} went to bed with a big smile. {f} had made {him} very {}.",
            pick(rng, GLAD)
        ),
    });
    if rng.below(2) == 0 {
        s.push("The end.".to_string());
    }
    s.join(" ")
}

/// `count` stories from `seed`.
pub fn stories(seed: u64, count: usize) -> Vec<String> {
    let mut rng = Rng::new(seed);
    (0..count).map(|_| story(&mut rng)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stories_are_reproducible_and_varied() {
        let a = stories(1, 200);
        assert_eq!(a, stories(1, 200));
        let distinct: std::collections::BTreeSet<&String> = a.iter().collect();
        assert!(distinct.len() > 190, "only {} distinct stories of 200", distinct.len());
        let words: std::collections::BTreeSet<&str> = a.iter().flat_map(|s| s.split_whitespace()).collect();
        assert!(words.len() > 400, "a vocabulary of only {} words", words.len());
    }
}
