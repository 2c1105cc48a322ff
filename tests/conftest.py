"""Shared fixtures: a real S3 server, a local Ray on 127.0.0.1, the shared data folder, tiny configs;
and the ``slow``/``cluster`` marks with the file order that lets two xdist workers finish together."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from saerec.runtime import LOCAL_ENV
from tests.s3server import SeaweedS3

for _key, _value in LOCAL_ENV.items():
    os.environ.setdefault(_key, _value)
# Ray start-up costs of a 2-core test machine, not behaviour. Every Ray started from here (``ray_local``,
# the job subprocesses, the ``ray start --head``) inherits these:
# - each Parquet read of Ray Data 2.60 starts 32 footer-reader actors, one process each; on two cores
#   spawning them took most of a tiny read (12 s for 600 rows). One reads every footer our tests write.
# - Ray Train's preemption watcher is one more actor per run, for cloud nodes this machine does not have.
TEST_RAY_ENV = {"RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
for _key, _value in TEST_RAY_ENV.items():
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """The development data folder: ``SAEREC_DATA_DIR`` or ``../shared/data`` beside the repo."""
    configured = os.environ.get("SAEREC_DATA_DIR")
    candidate = Path(configured) if configured else REPO.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    found = shared_data_dir()
    if found is None:
        pytest.skip("real data folder not found (set SAEREC_DATA_DIR or place shared/data beside the repo)")
    return found


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_uri(s3_server: SeaweedS3) -> str:
    """A fresh prefix in the test bucket for one test."""
    return f"s3://{s3_server.bucket}/t-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """Local Ray for the session; started after the S3 server so its workers inherit the S3 settings."""
    import ray
    from saerec.runtime import init_ray
    init_ray(None, num_cpus=2)
    yield ray
    ray.shutdown()


TINY_DEMO = ["data.demo.users=120", "data.demo.items=60", "data.demo.intents=6", "sae.epochs=2",
             "explain.top_texts=2", "explain.random_texts=2", "judge.max_latents=4", "judge.max_new_tokens=6",
             "judge.null_lists=16", 'judge.keep=["Yes", "Probably", "Maybe", "No"]', "rec.d=8", "rec.blocks=1", "rec.k=2",
             "rec.max_epochs=2", "rec.batch_size=64", "sweep.ablations=[saerec,sasrec]", "sweep.ks=[]",
             "sweep.review_drops=[]", "sweep.max_epochs=2", "report.example_intents=2"]


@pytest.fixture(scope="session")
def ray_head(s3_server, tmp_path_factory):
    """A private ``ray start --head`` on 127.0.0.1 for ``ray job submit`` tests; S3 access from a credentials file."""
    from tests.ray_head import RayHead, credentials_file_env
    from tests.s3server import ACCESS_KEY, SECRET_KEY
    head = RayHead(credentials_file_env(tmp_path_factory.mktemp("aws"), ACCESS_KEY, SECRET_KEY))
    head.start()
    yield head
    head.stop()


@pytest.fixture(scope="session")
def submitted_demo(ray_head, s3_server):
    """The tiny demo submitted once to ``ray_head`` with S3 storage; cluster and fault tests share its outputs."""
    from tests.ray_head import submit_demo
    return submit_demo(ray_head, s3_server.endpoint, s3_server.bucket, TINY_DEMO)


# A test that uses one of these fixtures starts Ray (``ray_local``: once per xdist worker) or a
# ``ray start --head`` (the cluster fixtures), so it carries these marks without repeating them.
FIXTURE_MARKS = {"ray_local": ("slow",), "ray_head": ("slow", "cluster"), "submitted_demo": ("slow", "cluster")}
# Files that each keep one worker busy for over two minutes (measured with --durations), longest first.
LONGEST_FILES = ("test_cluster.py", "test_demo_text_matters.py", "test_stage_train_sae.py", "test_stage_rec.py")


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by these marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that start Ray, then order the files: the longest, then those with the most
    slow tests, then the quick ones.

    With ``--dist loadfile --no-loadscope-reorder`` xdist hands out whole files in this order, each
    worker taking the next file when it is nearly done: the long files are spread over both workers
    first and the short ones fill in at the end, instead of one long file starting last.
    """
    slow_per_file: dict[Path, int] = {}
    for item in items:
        for fixture, marks in FIXTURE_MARKS.items():
            if fixture in item.fixturenames:
                for mark in marks:
                    item.add_marker(mark)
        slow_per_file.setdefault(item.path, 0)
        slow_per_file[item.path] += item.get_closest_marker("slow") is not None

    def rank(item: pytest.Item) -> tuple[int, int]:
        name = item.path.name
        longest = LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)
        return longest, -slow_per_file[item.path]

    items.sort(key=rank)
