"""The labelled text corpus of the default text model, written by the project.

Sentences are composed from templates and fillers, so the corpus is small, varied and
free of real people's posts. Each row keeps its template id: the held-out split is by
template, so the evaluation measures sentences built from patterns the model never saw.
`python -m pipeline.models.corpus` writes `data/text_corpus.csv`, kept in the repository.

Labels: violent_extremism (incitement to and glorification of terrorist violence), hate
(dehumanising or excluding a group), graphic_violence (gore described for its own sake),
benign (everyday posts, and news reporting, condemnation and discussion of attacks,
which must not be flagged). Groups are generic stand-ins, never real ones.
"""

from __future__ import annotations

import csv
import itertools
import random
from pathlib import Path

CORPUS = Path(__file__).parent / "data" / "text_corpus.csv"

FILL = {
    "group": [
        "those people",
        "the outsiders",
        "the newcomers",
        "that tribe",
        "the unbelievers",
        "the foreigners",
        "the other faith",
        "those migrants",
    ],
    "target": [
        "the crowd at the festival",
        "the market square",
        "the parliament",
        "their places of worship",
        "the city centre",
        "the stadium",
        "the school",
        "the concert hall",
    ],
    "attacker": [
        "the shooter",
        "the bomber",
        "the attacker",
        "our brother",
        "the martyr",
        "the lone fighter",
    ],
    "place": [
        "the city centre",
        "a mosque",
        "a church",
        "a shopping mall",
        "the train station",
        "a concert",
        "a synagogue",
        "the town square",
    ],
    "number": ["two", "five", "twelve", "fifty", "dozens of", "at least ten"],
    "weapon": ["a knife", "a rifle", "explosives", "a truck", "a gun", "a machete"],
    "thing": [
        "my cat",
        "the new recipe",
        "our garden",
        "the football match",
        "this book",
        "the weather",
        "my commute",
        "the holiday photos",
    ],
    "feeling": ["love", "enjoy", "can't stop thinking about", "am so proud of", "laughed at", "recommend"],
    "official": ["Police", "The interior minister", "Witnesses", "Officials", "The mayor", "Investigators"],
    "victim": ["the man", "the woman", "the boy", "the hostage", "the guard", "the prisoner"],
    "wound": [
        "skull cracked open",
        "throat slit",
        "intestines spilling out",
        "face torn off",
        "limbs hacked off",
        "eyes gouged out",
    ],
}

TEMPLATES: dict[str, list[str]] = {
    "violent_extremism": [
        "It is time to take up arms and attack {target}, show no mercy.",
        "{attacker} is a hero, may many more follow his example and strike {target}.",
        "Join the fight, grab {weapon} and make {group} pay with blood.",
        "We will purge {group} from our land, every true soldier must act now.",
        "Glory to {attacker} who killed {number} of {group}, the next attack is coming.",
        "Brothers, the day of the sword has come, slaughter {group} wherever you find them.",
        "Spread the manifesto and do what {attacker} did at {place}.",
        "Only violence will save us, attack {target} and livestream it for the cause.",
        "Death to {group}, our martyrs at {place} showed the way.",
        "Get {weapon} and hit {target} before they replace us.",
        "The holy war needs you, kill {group} and you will be remembered forever.",
        "Celebrate {attacker}, his high score at {place} must be beaten.",
        "Every one of you should arm yourselves and hunt down {group} tonight.",
        "Burn {target} to the ground and let {group} die inside.",
        "{attacker} did nothing wrong, we need a hundred more like him to wipe out {group}.",
        "Rise up warriors, bomb {target} and send a message to {group}.",
        "Our soldiers will return to {place} and finish the job, kill every last one of {group}.",
        "Pledge allegiance to the cause and carry out an attack on {target}.",
    ],
    "hate": [
        "{group} are vermin and should not be allowed in our country.",
        "I can't stand {group}, they are filthy animals.",
        "{group} are a disease infecting our nation.",
        "Never hire {group}, they are all liars and thieves.",
        "{group} are subhuman parasites living off our taxes.",
        "Kick {group} out, they don't belong among decent people.",
        "Everyone knows {group} are inferior by nature.",
        "{group} ruin every neighbourhood they move into, keep them out.",
        "Don't let your children near {group}, they are dirty.",
        "{group} should go back where they came from, nobody wants them here.",
        "Ban {group} from {place}, they pollute everything they touch.",
        "{group} breed like rats and will take over {place}.",
        "I would never let {group} into my shop, they are scum.",
        "The world would be better without {group}, they are a plague.",
        "{group} are too stupid to live among civilised people.",
    ],
    "graphic_violence": [
        "Look at the blood pouring out of {victim} after {weapon} hit him.",
        "The video shows bodies torn apart, guts all over the floor at {place}.",
        "Watch {victim} get beaten until the {wound}, uncut footage.",
        "Close up of {victim} with the {wound}, so much gore.",
        "They filmed {victim} bleeding out slowly with the {wound}, every scream.",
        "Full uncensored video of {victim} being tortured with {weapon}.",
        "Brains splattered on the wall at {place} after the shot, zoom in.",
        "The dismembered corpse of {victim} was left at {place}, here are the photos.",
    ],
    "benign": [
        "{official} said {number} people were killed in an attack at {place} on Tuesday.",
        "{official} confirmed that the suspect used {weapon} in the attack at {place}.",
        "Our thoughts are with the victims of the attack at {place}, hate will not win.",
        "We condemn the terrorist attack at {place} and stand with the families.",
        "Researchers study how extremist propaganda spreads online after attacks like {place}.",
        "The trial of {attacker} for the attack at {place} began today, {official} reported.",
        "A vigil was held for the {number} victims of the shooting at {place}.",
        "How can communities heal after violence at {place}? Experts discuss.",
        "I {feeling} {thing}, what a great day!",
        "Does anyone have tips for {thing}? Asking for a friend.",
        "Just finished reading about {thing}, highly recommended.",
        "Weekend plans: {thing} and a long walk in the park.",
        "The documentary about the history of {place} was fascinating.",
        "{official} urged people to report hateful content instead of sharing it.",
        "My grandmother taught me to welcome {group} as neighbours.",
        "The museum opened a new exhibition about the victims of terrorism.",
        "The horror film at {place} was silly, fake blood everywhere but no real scares.",
        "Please donate blood this week, the hospital near {place} is running low.",
        "Paramedics treated {victim} for injuries after the accident near {place}.",
        "Historians describe how the war destroyed {place} and killed {number} civilians.",
        "Breaking: {number} dead after a gunman opened fire at {place}, {official} said.",
        "{official} arrested a suspect who planned to attack {target}.",
        "The court sentenced {attacker} to life in prison for the massacre at {place}.",
        "Survivors of the attack at {place} describe the moment {attacker} started shooting.",
        "Platforms removed the livestream of the attack at {place} within minutes, {official} said.",
        "Why do people join violent extremist groups? A new study looks at {group}.",
        "Vigils and flowers outside {place} as the city mourns the victims.",
    ],
}


def generate(per_template: int = 24, seed: int = 7) -> list[tuple[str, str, str]]:
    """(text, label, template id) rows, deterministic for a seed."""
    rng = random.Random(seed)
    rows = []
    for label, templates in TEMPLATES.items():
        for t_index, template in enumerate(templates):
            slots = [name for _, name, _, _ in __import__("string").Formatter().parse(template) if name]
            combos = list(itertools.product(*(FILL[s] for s in slots))) or [()]
            rng.shuffle(combos)
            seen = set()
            for combo in combos[:per_template]:
                text = template.format(**dict(zip(slots, combo, strict=True)))
                if rng.random() < 0.3:
                    text = text.lower()
                if rng.random() < 0.2:
                    text = text.upper() if label != "benign" or rng.random() < 0.5 else text
                if text not in seen:
                    seen.add(text)
                    rows.append((text, label, f"{label}-{t_index}"))
    return rows


def write(path: Path = CORPUS) -> int:
    rows = generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label", "template"])
        writer.writerows(rows)
    return len(rows)


def read(path: Path = CORPUS) -> list[tuple[str, str, str]]:
    with path.open(newline="") as f:
        return [(r["text"], r["label"], r["template"]) for r in csv.DictReader(f)]


if __name__ == "__main__":
    print(f"wrote {write()} rows to {CORPUS}")
