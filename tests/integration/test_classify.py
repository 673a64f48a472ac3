"""Classification through the broker: extremist text, in English and French, is scored high and
removed or sent to review per the thresholds; news about the same attack and condemnation of
it are allowed; a banked image is not classified; a platform's image model plugs in through
the registry."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from PIL import Image

from pipeline.app import App
from pipeline.banks.admin import media_entries, publish
from pipeline.config import Settings
from pipeline.models.registry import DEFAULT_REGISTRY, load_registry
from pipeline.policy.engine import DEFAULT_POLICY
from pipeline.sdk import ModerationProducer
from tests.media import encode, photo
from tests.models import registry_with_image_model

from .helpers import collect, event_ids, running

pytestmark = pytest.mark.integration

INCITEMENT = "Brothers, grab a rifle and attack the crowd at the festival, kill every last one of them."
GLORIFICATION = "Glory to the shooter who killed twelve of the unbelievers, may many more follow his example."
NEWS = "Police said a gunman killed twelve people in an attack at the festival on Tuesday."
CONDEMNATION = "We condemn the terrorist attack at the festival and stand with the families of the victims."
INCITEMENT_FR = "Frères, prenez un fusil et attaquez la foule du festival, tuez-les jusqu'au dernier."
NEWS_FR = "Selon la police, un homme armé a tué douze personnes lors d'une attaque au festival mardi."


def test_text_and_image_classification_with_decide(settings: Settings, tmp_path: Path) -> None:
    # The platform's policy adds a rule for its image model's label, at the registry's threshold.
    policy = yaml.safe_load(DEFAULT_POLICY.read_text())
    policy["rules"].append(
        {"id": "image-bright", "when": {"score": {"label": "bright", "at_least": "review"}}, "action": "review"}
    )
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    app = App(settings.with_(models=str(registry_with_image_model(tmp_path)), policy=str(tmp_path / "policy.yaml")))
    banned = photo(1200)
    publish(settings, media_entries(encode(banned), "tvec", "terrorism", "critical", "gifct", "img-1200"))
    producer = ModerationProducer(settings)
    stages = [app.build(n) for n in ("enrich", "match", "classify", "decide")]
    with running(settings, stages):
        sent = {
            "incitement": producer.send_upload("c-1", "u1", text=INCITEMENT),
            "glorification": producer.send_upload("c-2", "u2", text=GLORIFICATION),
            "news": producer.send_upload("c-3", "u3", text=NEWS),
            "condemnation": producer.send_upload("c-4", "u4", text=CONDEMNATION),
            "banked": producer.send_upload("c-5", "u5", media=encode(banned), text=INCITEMENT),
            "bright": producer.send_upload("c-6", "u6", media=encode(Image.new("RGB", (64, 64), (250, 250, 250)))),
            "incitement_fr": producer.send_upload("c-7", "u7", text=INCITEMENT_FR),
            "news_fr": producer.send_upload("c-8", "u8", text=NEWS_FR),
        }
        producer.flush()
        found = collect(settings, "decisions", lambda ds: set(sent.values()) <= set(event_ids(ds)), 120)
    app.close()
    d = {name: next(x for x in found if x["envelope"]["event_id"] == eid) for name, eid in sent.items()}

    [text_spec] = load_registry(DEFAULT_REGISTRY)
    review = text_spec.thresholds["violent_extremism"].review
    for name in ("incitement", "glorification", "incitement_fr"):
        ve = next(s["score"] for s in d[name]["scores"] if s["label"] == "violent_extremism")
        assert ve >= review, (name, d[name]["scores"])
        assert d[name]["action"] in ("remove", "review"), name
        assert d[name]["rule_id"] in ("classifier-remove", "classifier-review-extremism")
        assert d[name]["category"] == "violent_extremism"
        assert any(k.startswith("text-default/violent_extremism") for k in d[name]["thresholds"])
    for name in ("news", "condemnation", "news_fr"):
        assert d[name]["action"] == "allow", (name, d[name]["scores"])
    assert d["banked"]["action"] == "remove" and d["banked"]["rule_id"] == "bank-match-severe"
    assert d["banked"]["scores"] == []  # confident bank match: not classified
    assert d["bright"]["action"] == "review" and d["bright"]["rule_id"] == "image-bright"
    assert d["bright"]["category"] == "bright" and d["bright"]["thresholds"] == {"brightness/bright": 0.9}


def test_broken_registry_stops_the_stage_at_start(settings: Settings, tmp_path: Path) -> None:
    from .test_cli import cli

    bad = tmp_path / "models.yaml"
    bad.write_text("models:\n  - {name: m, modality: text, file: missing.onnx, input: t, output: o, labels: [a]}\n")
    env_settings = settings.with_(models=str(bad))
    out = cli(env_settings, "run", "classify", timeout=60)
    assert out.returncode != 0
    assert "model m: file" in out.stderr and "not found" in out.stderr
