"""End to end through the Dagster UI in a real headless Chromium.

``n2w dev`` serves generated narrow data; the test opens the wide-table asset group, launches a
backfill of 1 ship x 6 hours through the UI's own partition dialog (the path users take, which
honours ``BackfillPolicy.multi_run``), waits for the backfill page to say it succeeded, then
checks the database (exactly those partitions' rows, equal to an independent SQL pivot), the
instance (one run covering the range) and the UI: partition counts, and every asset check
shown as the run recorded it — "n / 4 Passed" on the asset graph, each check's status on the
Checks tab (the checks are not partitioned, so a range run's results are what the UI shows).

Screenshots of every step land in the test's ``tmp_path``; with ``N2W_UPDATE_SCREENSHOTS=1``
the asset graph and the finished backfill are also copied to ``docs/screenshots/`` for the
README. Needs Debian's ``chromium`` (``/usr/bin/chromium`` or ``N2W_CHROMIUM``): when it is
missing the test installs it with apt-get if it can (root or passwordless sudo), and skips
only if it cannot, unless ``N2W_REQUIRE_BROWSER=1`` (set by ``.ci/run``) makes that a failure.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import dagster as dg
import psutil
import psycopg
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect, sync_playwright
from psycopg import sql

from n2w_pipeline.channels import load_catalog
from n2w_pipeline.config import Settings
from n2w_pipeline.database import _embedded_server, database_url
from n2w_pipeline.generate import generate
from n2w_pipeline_tests.helpers import sql_reference, wide_cells

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("N2W_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SHIP, OTHER_SHIP = "IMO9976903", "IMO9976915"
H0 = dt.datetime(2025, 3, 1, 0, 0)
GENERATED_HOURS = 8                     # 00:00..08:00 in the narrow table
FIRST, LAST = H0 + dt.timedelta(hours=1), H0 + dt.timedelta(hours=6)  # backfilled: 01:00..06:00
ROWS_PER_HOUR = 240                     # 15-second cadence
SERVER_START_S = 180                    # generous deadlines: failures, not speed, are tested
BACKFILL_S = 900
RUNNING = ("", "Requested", "Queued", "Started", "In progress", "Canceling")  # backfill states
VIEWPORT = {"width": 1400, "height": 860}
GRAPH_VIEWPORT = {"width": 1400, "height": 1120}
README_SHOTS = {"08_asset_graph_after.png": "asset_graph.png",
                "06_backfill_finished.png": "backfill_finished.png"}


def _hour(t: dt.datetime) -> str:
    return f"{t:%Y-%m-%d-%H:%M}"


# -- chromium ------------------------------------------------------------------------------

def _install_chromium() -> str:
    """apt-get install chromium as root or through passwordless sudo; '' or why it failed."""
    if shutil.which("apt-get") is None:
        return "apt-get not available"
    if os.geteuid() == 0:
        prefix: list[str] = []
    elif shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        prefix = ["sudo", "-n"]
    else:
        return "not root and no passwordless sudo"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        r = subprocess.run(prefix + cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            return f"{' '.join(cmd)} failed: {r.stderr.strip()[-300:]}"
    return "" if CHROMIUM.exists() else f"apt-get installed chromium but {CHROMIUM} is missing"


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        why = _install_chromium()
        if why:
            reason = f"{CHROMIUM} is missing and cannot be installed ({why}): apt-get install chromium"
            if os.environ.get("N2W_REQUIRE_BROWSER") == "1":
                pytest.fail(reason)
            pytest.skip(reason)
    return CHROMIUM


# -- the database and `n2w dev` ------------------------------------------------------------

@dataclass
class Stack:
    settings: Settings
    env: dict[str, str]
    data_url: str
    dagster_url: str | None  # external instance URL, None when embedded
    state_dir: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _with_search_path(url: str, schema: str) -> str:
    """The Dagster instance URL: the test server, psycopg2 scheme, its own schema."""
    parts = urlsplit(url)
    query = "&".join(q for q in [parts.query, "options=" + quote(f"-csearch_path={schema}")] if q)
    return urlunsplit(parts._replace(scheme="postgresql+psycopg2", query=query))


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """Settings and environment for `n2w dev`: the embedded default under a fresh state dir,
    or N2W_TEST_DATABASE_URL with fresh schemas for the data and for the Dagster instance."""
    # outside /root and pytest's 0700 dirs: the embedded server runs unprivileged as root
    state = Path(tempfile.mkdtemp(prefix="n2w-ui-", dir="/tmp"))
    (tmp_path / "migration_data").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("N2W_", "DAGSTER_"))}
    env.update({
        "N2W_STATE_DIR": str(state),
        "N2W_SHIPS": f"{SHIP},{OTHER_SHIP}",
        "N2W_PARTITION_START": _hour(H0),
        "N2W_CHANNEL_LISTS": str(REPO / "channel_lists"),
        "N2W_MIGRATION_DIR": str(tmp_path / "migration_data"),
        # the realtime sensor would materialise the generated hours on its own: off, so the
        # wide tables hold exactly what the UI backfill wrote
        "N2W_REALTIME": "0",
    })
    external = os.environ.get("N2W_TEST_DATABASE_URL")
    data_schema = dagster_schema = None
    dagster_url = None
    if external:
        tag = uuid.uuid4().hex[:10]
        data_schema, dagster_schema = f"t_ui_{tag}", f"t_ui_dagster_{tag}"
        with psycopg.connect(external, autocommit=True) as conn:
            for name in (data_schema, dagster_schema):
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        dagster_url = _with_search_path(external, dagster_schema)
        env.update({"N2W_DATABASE_URL": external, "N2W_SOURCE_SCHEMA": data_schema,
                    "N2W_TARGET_SCHEMA": data_schema, "N2W_DAGSTER_PG_URL": dagster_url})
    settings = Settings.from_env(env)
    try:
        # start the embedded server here, before `n2w dev` and the generator both want it
        yield Stack(settings, env, database_url(settings), dagster_url, state)
    finally:
        if external:
            with psycopg.connect(external, autocommit=True) as conn:
                for name in (data_schema, dagster_schema):
                    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
        else:
            server = _embedded_server(state)
            server.cleanup_mode = "delete"
            server.cleanup()
        shutil.rmtree(state, ignore_errors=True)


@dataclass
class Dev:
    url: str
    proc: subprocess.Popen
    log: Path

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def _n2w_command() -> list[str]:
    script = Path(sys.executable).with_name("n2w")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from n2w_pipeline.cli import main; sys.exit(main())"]


def _stop_tree(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM `n2w dev` (which stops Dagster's process group), then SIGKILL whatever of
    its process tree is still alive after ``grace`` seconds."""
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(tree, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=10)
    proc.wait(timeout=10)


@pytest.fixture
def n2w_dev(stack: Stack, tmp_path: Path) -> Iterator[Dev]:
    """`n2w dev --port <free port>` as a user runs it, stopped with its whole tree after."""
    port = _free_port()
    log = tmp_path / "n2w_dev.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*_n2w_command(), "dev", "--port", str(port)], cwd=tmp_path, env=stack.env,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    dev = Dev(f"http://127.0.0.1:{port}", proc, log)
    try:
        yield dev
    finally:
        _stop_tree(proc)


def _wait_for_server(dev: Dev) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if dev.proc.poll() is not None:
            pytest.fail(f"n2w dev exited with {dev.proc.returncode}:\n{dev.log_tail()}")
        try:
            with urllib.request.urlopen(dev.url + "/server_info", timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    pytest.fail(f"Dagster UI not up after {SERVER_START_S} s:\n{dev.log_tail()}")


# -- the test ------------------------------------------------------------------------------

class Shots:
    """Numbered screenshots of each step, in the test's output directory."""

    def __init__(self, page, out: Path) -> None:  # noqa: ANN001 - playwright Page
        self.page, self.out, self.taken = page, out, []
        out.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str) -> Path:
        path = self.out / name
        self.page.screenshot(path=str(path))
        self.taken.append(path)
        return path


def _status(page, label: str) -> str:  # noqa: ANN001
    """The value under a page header label such as 'Status' (backfill page)."""
    m = re.search(rf"^{label}\n(.+)$", page.locator("body").inner_text(), re.M)
    return m.group(1).strip() if m else ""


def _hrefs(links) -> list[str]:  # noqa: ANN001 - playwright Locator
    return links.evaluate_all("els => els.map(e => e.getAttribute('href'))")


def _backfill_runs(stack: Stack, backfill_id: str, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN202
    """The backfill's runs (by id) and its asset check results, from n2w's instance:
    ([runs], {(asset, check): passed})."""
    from n2w_pipeline.instance import dagster_env

    if stack.dagster_url:
        monkeypatch.setenv("N2W_DAGSTER_PG_URL", stack.dagster_url)
    else:
        monkeypatch.delenv("N2W_DAGSTER_PG_URL", raising=False)
    for key, value in dagster_env(stack.settings).items():
        monkeypatch.setenv(key, value)
    evaluations: dict[tuple[str, str], bool] = {}
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
        for run in runs:
            for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
                ev = entry.get_dagster_event().event_specific_data
                evaluations[(ev.asset_key.to_user_string(), ev.check_name)] = ev.passed
    return sorted(runs, key=lambda r: r.run_id), evaluations


def _wide_check_keys(settings: Settings) -> dict[str, list[str]]:
    """Asset checks on the wide assets, as the code location defines them: asset -> names."""
    from n2w_pipeline.definitions import build_definitions

    graph = build_definitions(settings).resolve_asset_graph()
    catalog = load_catalog(settings.channel_lists_dir)
    wide = {g.asset_name for g in catalog.groups}
    out: dict[str, list[str]] = {}
    for key in graph.asset_check_keys:
        asset = key.asset_key.to_user_string()
        if asset in wide:
            out.setdefault(asset, []).append(key.name)
    return {a: sorted(names) for a, names in sorted(out.items())}


def test_backfill_from_the_ui_writes_exactly_the_selected_partitions(
    chromium: Path, stack: Stack, n2w_dev: Dev, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t_start = t_last = time.monotonic()
    phases: list[str] = []

    def phase(what: str) -> None:
        nonlocal t_last
        now = time.monotonic()
        phases.append(f"{now - t_last:6.1f} s  {what}")
        t_last = now

    settings = stack.settings
    catalog = load_catalog(settings.channel_lists_dir)
    with psycopg.connect(stack.data_url, autocommit=True) as conn:  # while Dagster boots
        generate(conn, settings, catalog, [SHIP], H0, H0 + dt.timedelta(hours=GENERATED_HOURS))
    phase(f"generated 1 ship x {GENERATED_HOURS} h of narrow rows")
    _wait_for_server(n2w_dev)
    phase("Dagster UI up")
    checks = _wide_check_keys(settings)
    out = tmp_path / "screenshots"

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport=VIEWPORT, timezone_id="UTC").new_page()
            page.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)
            # a fresh instance greets with "Join the Dagster community" over every page, a
            # few seconds after the first page loads: skip it whenever it is in the way
            community = page.get_by_role("dialog").filter(has_text="Join the Dagster community")
            page.add_locator_handler(
                community, lambda: community.get_by_role("button", name="Skip", exact=True).click()
            )
            shot = Shots(page, out)
            base = n2w_dev.url
            assets = [g.asset_name for g in catalog.groups]

            # 1. the wide assets' group
            page.goto(f"{base}/locations/n2w/asset-groups/wide_tables")
            for name in assets:
                expect(page.get_by_text(name, exact=True).first).to_be_visible()
            expect(page.get_by_text(re.compile(r"partitions$")).first).to_be_visible()
            with contextlib.suppress(PlaywrightTimeout):
                community.get_by_role("button", name="Skip", exact=True).click(timeout=20_000)
            expect(community).to_be_hidden()
            shot("01_asset_graph.png")

            # 2. the UI's own partition dialog: 1 ship x 6 hours
            page.get_by_role("button", name="Materialize all…").click()
            dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize")
            expect(dialog).to_contain_text(f"materialize {len(assets)} assets")
            hours = dialog.locator("input[placeholder^='ex:']")
            hours.fill(f"[{_hour(FIRST)}...{_hour(LAST)}]")
            hours.press("Enter")
            dialog.get_by_text("Select a partition or create one").click()
            page.get_by_role("menuitem").filter(has=page.get_by_title(SHIP, exact=True)).click()
            page.keyboard.press("Escape")  # close the ship list, keep the dialog
            expect(dialog.get_by_text("6 partitions", exact=True)).to_be_visible()
            shot("02_partition_dialog.png")

            dialog.get_by_role("button", name="Preview").click()
            preview = page.get_by_role("dialog").filter(has_text="Backfill preview")
            expect(preview).to_contain_text("Backfills in multiple runs")
            shot("03_backfill_preview.png")
            preview.get_by_role("button", name="OK").click()

            dialog.get_by_role("button", name="Launch backfill").click()
            expect(dialog).to_be_hidden()
            expect(page.get_by_text("Created backfill")).to_be_visible()  # the toast names it
            created = re.search(r"Created backfill\s+(\w+)", page.locator("body").inner_text())
            assert created, "no 'Created backfill' toast"
            backfill_id = created.group(1)
            shot("04_backfill_launched.png")

            # 3. the backfill list, then its page until it is done
            page.goto(f"{base}/overview/backfills")
            links = page.locator("a[href*='/runs/b/']")
            expect(links.first).to_be_visible()
            # a fresh instance: ours is the only backfill
            assert {h.split("?")[0] for h in _hrefs(links)} == {f"/runs/b/{backfill_id}"}
            shot("05_backfills_list.png")
            links.first.click()
            page.wait_for_url(re.compile(rf"/runs/b/{backfill_id}"))
            deadline = time.monotonic() + BACKFILL_S
            while (status := _status(page, "Status")) in RUNNING:
                if time.monotonic() > deadline:
                    pytest.fail(f"backfill {backfill_id} still {status!r} after {BACKFILL_S} s:\n"
                                f"{n2w_dev.log_tail()}")
                page.wait_for_timeout(2000)
            shot("06_backfill_finished.png")
            assert status == "Succeeded", f"backfill {backfill_id}: {status}\n{n2w_dev.log_tail()}"
            text = page.locator("body").inner_text()
            for name in assets:  # partitions targeted, in progress, succeeded, failed
                counts = re.search(rf"^{name}$(?:\n(?!\d+$).*)*\n(\d+)\n(\d+)\n(\d+)\n(\d+)$", text, re.M)
                assert counts and counts.groups() == ("6", "0", "6", "0"), (name, text)
            page.get_by_role("tab", name="Runs").click()
            run_links = page.locator("a[href^='/runs/']").filter(has_text=re.compile(r"^[0-9a-f]{8}$"))
            expect(run_links.first).to_be_visible()  # a run's link reads its short id
            ui_runs = {m.group(1) for h in _hrefs(run_links)
                       if (m := re.match(r"^/runs/([0-9a-f-]{36})", h))}
            shot("07_backfill_runs.png")
            phase("backfill launched and finished in the UI")

            # 4. the instance: an asset backfill honours BackfillPolicy.multi_run -> one run
            #    for 1 ship x 6 hours (a job-page backfill would not: Dagster issues #28861, #30786, #17404)
            runs, evaluations = _backfill_runs(stack, backfill_id, monkeypatch)
            assert [r.run_id for r in runs] == sorted(ui_runs)
            assert runs[0].status == dg.DagsterRunStatus.SUCCESS
            assert runs[0].tags["dagster/asset_partition_range_start"] == f"{_hour(FIRST)}|{SHIP}"
            assert runs[0].tags["dagster/asset_partition_range_end"] == f"{_hour(LAST)}|{SHIP}"

            # 5. the graph with the new materialisations and the checks the backfill run recorded:
            #    every check of every wide asset evaluated, each shown as the instance has it
            assert set(evaluations) == {(a, c) for a, names in checks.items() for c in names}
            summaries = {a: f"{sum(evaluations[(a, c)] for c in names)} / {len(names)} Passed"
                         for a, names in checks.items()}
            page.set_viewport_size(GRAPH_VIEWPORT)  # the group's graph with its downstream stubs, whole
            page.goto(f"{base}/locations/n2w/asset-groups/wide_tables")
            expect(page.get_by_text(re.compile(r" ago$"))).to_have_count(len(assets))
            expect(page.get_by_text(re.compile(r"^Loading"))).to_have_count(0)
            expect(page.get_by_text(re.compile(r"^\d+ / \d+ Passed$"))).to_have_count(len(assets))
            for text in set(summaries.values()):  # waits for the live data to arrive
                expect(page.get_by_text(text, exact=True)).to_have_count(
                    sum(v == text for v in summaries.values()))
            shot("08_asset_graph_after.png")
            page.set_viewport_size(VIEWPORT)
            for asset, names in checks.items():
                page.goto(f"{base}/assets/{asset}?view=checks")
                expect(page.get_by_text(f"Checks ({len(names)})", exact=True)).to_be_visible()
                for check in names:
                    passed = evaluations[(asset, check)]
                    item = page.get_by_text(check, exact=True).first
                    expect(item).to_be_visible()
                    # the list's status line under each check name (drawn twice: MiddleTruncate),
                    # then the check's own page
                    body = page.locator("body").inner_text()
                    listed = re.search(rf"^{check}\n(?:{check}\n)*(.+)$", body, re.M)
                    assert listed and listed.group(1) == ("Succeeded" if passed else "Failed"), (
                        asset, check, listed and listed.group(1))
                    item.click()
                    expect(page.get_by_text("Evaluation result", exact=True)).to_be_visible()
                    result = _status(page, "Evaluation result")
                    assert result in ({"Passed"} if passed else {"Failed", "Warning"}), (asset, check, result)
                shot(f"09_checks_{asset}.png")
            page.goto(f"{base}/assets/{assets[0]}")  # description and definition metadata
            expect(page.get_by_text("column_count", exact=True).first).to_be_visible()
            shot("10_asset_overview.png")
            phase("graph and checks read back")
        finally:
            browser.close()

    # 6. the database: exactly the six hours of SHIP, equal to the SQL pivot
    with psycopg.connect(stack.data_url, autocommit=True) as conn:
        for group in catalog.groups:
            times, cells = wide_cells(conn, settings, group, SHIP)
            ref_times, ref_cells = sql_reference(conn, settings, group, SHIP, FIRST,
                                                 LAST + dt.timedelta(hours=1))
            assert len(times) == 6 * ROWS_PER_HOUR, group.asset_name
            assert times == ref_times, group.asset_name
            assert cells == ref_cells, group.asset_name
            other = conn.execute(
                "SELECT to_regclass(%s)",
                (f'"{settings.target_schema}"."{settings.table_name(OTHER_SHIP, group.number)}"',),
            ).fetchone()
            assert other == (None,), f"{OTHER_SHIP} was not selected but has a wide table"

    phase("database compared with the SQL pivot")

    if os.environ.get("N2W_UPDATE_SCREENSHOTS") == "1":
        docs = REPO / "docs" / "screenshots"
        docs.mkdir(parents=True, exist_ok=True)
        for src, dest in README_SHOTS.items():
            shutil.copyfile(out / src, docs / dest)
    print(f"\nbrowser test, {time.monotonic() - t_start:.0f} s before teardown:\n  "
          + "\n  ".join(phases) + f"\nscreenshots in {out}:\n  "
          + "\n  ".join(p.name for p in shot.taken))


def test_no_job_page_offers_a_partitioned_backfill(settings: Settings) -> None:
    """Backfills launched from a job page see only each run's first partition (upstream
    bugs #28861, #30786, #17404): n2w must not show a partitioned job in the UI. Jobs named
    ``__…`` (the implicit asset job, sensors' anonymous jobs) get no page."""
    from n2w_pipeline.definitions import build_definitions

    shown = [j for j in build_definitions(settings).resolve_all_job_defs() if not j.name.startswith("__")]
    partitioned = [j.name for j in shown if j.partitions_def is not None]
    assert partitioned == [], f"jobs whose page offers a (broken) partitioned backfill: {partitioned}"
