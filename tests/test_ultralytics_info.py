"""Building the detection network the way the toolkit does (inference's ``build_model``, training's
``get_model``) prints none of ultralytics' informational lines (``Overriding model.yaml nc=80 with
nc=3``, the layer table: once per detector load, a debug run printed the first 13 times), and the
level a caller gave ultralytics' logger, and its own lines, are as they were after."""
import logging
from types import SimpleNamespace

import pytest

from implicit_concept.concepts import CONCEPT_NAMES
from implicit_concept.detector.inference import build_model
from implicit_concept.detector.training import _in_memory_trainer
from implicit_concept.detector.yolo_env import import_ultralytics

NOISE = ("Overriding model.yaml", "ultralytics.nn.modules", "summary:")


def _built_by_training() -> None:
    trainer_class = _in_memory_trainer(import_ultralytics("ultralytics.models.yolo.detect").DetectionTrainer, "yolov8n.yaml")
    trainer = object.__new__(trainer_class)  # only what get_model reads
    trainer.data = {"nc": len(CONCEPT_NAMES), "channels": 3, "names": dict(enumerate(CONCEPT_NAMES))}
    trainer.args = SimpleNamespace(cls_remap=True)
    trainer.get_model(verbose=True)


@pytest.mark.parametrize("build", [lambda: build_model("yolov8n.yaml", CONCEPT_NAMES), _built_by_training],
                         ids=["inference", "training"])
@pytest.mark.parametrize("callers_level", [logging.INFO, logging.DEBUG])
def test_building_the_network_prints_no_informational_line_and_keeps_the_callers_level(capfd, build, callers_level):
    logger = logging.getLogger("ultralytics")
    import_ultralytics()
    before = logger.level
    logger.setLevel(callers_level)
    try:
        capfd.readouterr()
        build()
        err = capfd.readouterr().err
        assert logger.level == callers_level
        logger.info("the caller's own line")
        assert "the caller's own line" in capfd.readouterr().err, "nothing hides its lines after the build"
    finally:
        logger.setLevel(before)
    assert not [line for line in NOISE if line in err], err[-2000:]


def test_within_the_hidden_block_its_warnings_and_errors_are_still_shown(capfd):
    """Only the informational lines are noise: a warning ultralytics gives while the toolkit builds,
    trains or validates (a dataset's missing labels, a corrupt image skipped) is the user's to read."""
    from implicit_concept.detector.yolo_env import info_hidden

    logger = import_ultralytics("ultralytics.utils").LOGGER
    before = logger.level
    logger.setLevel(logging.INFO)  # as a verbose import leaves it
    try:
        capfd.readouterr()
        with info_hidden():
            logger.info("an informational line")
            logger.warning("a warning line")
            logger.error("an error line")
        err = capfd.readouterr().err
    finally:
        logger.setLevel(before)
    assert "an informational line" not in err
    assert "a warning line" in err and "an error line" in err, err
