"""The live view in a real browser: Debian's headless chromium, driven by selenium
through Debian's chromedriver (`make test-tools` installs both), against a real
5-node Cluster.

The page is read as a person reads it: each node's glyph carries its role, term
and process state as data attributes, and the test compares them with
`cluster.status()` after each step. It acts only through the page's own controls
(kill, partition, heal), so the whole path is covered: button -> WebSocket ->
Cluster -> nodes -> status feed -> drawing.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from kvcluster.cluster import Cluster

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Generous for a busy 2-core machine: elections, the feed's ~100 ms polling and
# the browser all share it. Conditions are polled; nothing sleeps and assumes.
DEADLINE = 60.0
POLL = 0.2

T = TypeVar("T")

# Read the view: one record per node glyph, from its data attributes.
READ_VIEW = """
return Array.from(document.querySelectorAll('#nodes g[data-node]')).map(g => ({
  name: g.dataset.node, role: g.dataset.role, term: g.dataset.term,
  process: g.dataset.process, isolated: g.dataset.isolated,
}));
"""


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """Headless chromium with a fresh profile, removed afterwards with the browser."""
    for path in (CHROMIUM, CHROMEDRIVER):
        assert Path(path).exists(), (
            f"{path} is missing: run `make test-tools` "
            "(on Debian: sudo apt-get install chromium chromium-driver)"
        )
    profile = tempfile.mkdtemp(prefix="kvcluster-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # root in containers and CI has no user namespace sandbox
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1400,1500",
    ):
        options.add_argument(flag)
    # An explicit driver path: selenium then never looks for (or downloads) one.
    driver = None
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        driver.set_page_load_timeout(DEADLINE)
        yield driver
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with Cluster(5) as c:
        c.wait_for_leader(DEADLINE)
        yield c


def wait_for(
    what: str,
    check: Callable[[], T | None],
    timeout: float = DEADLINE,
    seen: Callable[[], str] | None = None,
) -> T:
    """Poll check() until it returns something truthy; fail naming what never came
    (and, given `seen`, what was there instead)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(POLL)
    detail = f"; last seen: {seen()}" if seen else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")


def view(driver: WebDriver) -> dict[str, dict[str, str]]:
    return {n["name"]: n for n in driver.execute_script(READ_VIEW)}


def truth(cluster: Cluster) -> dict[str, dict[str, str]]:
    """What cluster.status() says, in the view's terms (a silent node has no role)."""
    out: dict[str, dict[str, str]] = {}
    for _, row in cluster.status().iterrows():
        process = (
            "removed"
            if row["removed"]
            else "paused"
            if row["paused"]
            else "alive"
            if row["alive"]
            else "killed"
        )
        answered = row["role"] is not None and process == "alive"
        out[row["name"]] = {
            "process": process,
            "role": row["role"] if answered else "none",
            "term": str(int(row["term"])) if answered else "",
        }
    return out


def view_matches(shown: dict[str, dict[str, str]], expected: dict[str, dict[str, str]]) -> bool:
    """Whether the view shows what cluster.status() shows (role, term, process per node).

    The caller reads the status first and the view after it: the feed lags ~100 ms,
    so a change between the two fails this attempt and the caller tries again."""
    got = {
        name: {"process": n["process"], "role": n["role"], "term": n["term"]}
        for name, n in shown.items()
    }
    return got == expected


def leaders(shown: dict[str, dict[str, str]]) -> list[str]:
    return [name for name, n in shown.items() if n["role"] == "leader"]


def settled(driver: WebDriver, cluster: Cluster, what: str, extra: Callable[..., bool]) -> dict:
    """Wait until the view matches cluster.status(), shows exactly one leader (in the
    header too) and meets `extra`; returns that view."""
    last: dict[str, Any] = {}

    def check() -> dict[str, dict[str, str]] | None:
        last["status"] = truth(cluster)
        last["view"] = shown = view(driver)
        if not view_matches(shown, last["status"]) or len(leaders(shown)) != 1:
            return None
        if not extra(shown):
            return None
        count = driver.find_element(By.ID, "leader-count").get_attribute("data-count")
        return shown if count == "1" else None

    def seen() -> str:
        return f"view {last.get('view')}, status {last.get('status')}"

    return wait_for(what, check, seen=seen)


def click(driver: WebDriver, selector: str) -> None:
    button = wait_for(
        f"an enabled {selector}",
        lambda: next(
            (b for b in driver.find_elements(By.CSS_SELECTOR, selector) if b.is_enabled()), None
        ),
    )
    button.click()


def control_answered(driver: WebDriver, area: str, action: str) -> None:
    """Wait for the page to show the server's answer to a control, and that it was ok."""
    box = f'[data-result-for="{area}"]'

    def answered() -> str | None:
        el = driver.find_element(By.CSS_SELECTOR, box)
        state = el.get_attribute("data-state")
        if el.get_attribute("data-action") != action or state == "pending":
            return None
        return state

    state = wait_for(f"the answer to {action}", answered)
    text = driver.find_element(By.CSS_SELECTOR, box).text
    assert state == "ok", f"{action} failed in the page: {text}"


def test_the_view_follows_a_real_cluster_through_kill_partition_and_heal(
    cluster: Cluster, browser: WebDriver
) -> None:
    browser.get(cluster.dashboard().url)

    # Five nodes, exactly one leader, each as cluster.status() says.
    shown = settled(browser, cluster, "five nodes and one leader", lambda s: len(s) == 5)
    assert set(shown) == {f"n{i}" for i in range(5)}
    (first,) = leaders(shown)
    first_term = int(shown[first]["term"])

    # Kill the leader from its row: a new leader, at a higher term.
    click(browser, f'#node-table button[data-action="kill"][data-node="{first[1:]}"]')
    control_answered(browser, "nodes", "kill")
    shown = settled(
        browser,
        cluster,
        "a new leader with a higher term after the kill",
        lambda s: (
            s[first]["process"] == "killed"
            and leaders(s) != [first]
            and int(s[leaders(s)[0]]["term"]) > first_term
        ),
    )
    (second,) = leaders(shown)
    second_term = int(shown[second]["term"])

    # Partition through the group picker: the leader and the killed node in group B,
    # the other three (a majority of five) in group A elect a leader of their own.
    for name in (second, first):
        browser.find_element(By.CSS_SELECTOR, f'[data-pick="{name}"]').click()
    click(browser, '[data-action="partition"]')
    control_answered(browser, "network", "partition")
    wait_for(
        "the cut links drawn",
        lambda: browser.find_elements(By.CSS_SELECTOR, '[data-fault-link][data-cut="true"]'),
    )
    shown = settled(
        browser,
        cluster,
        "a leader in the majority after the partition",
        lambda s: (
            leaders(s)[0] not in (first, second) and int(s[leaders(s)[0]]["term"]) > second_term
        ),
    )

    # Heal: the faults disappear from the view and one leader remains.
    click(browser, '[data-action="heal"]')
    control_answered(browser, "network", "heal")
    wait_for(
        "no faulted link left in the view",
        lambda: not browser.find_elements(By.CSS_SELECTOR, "[data-fault-link]"),
    )
    shown = settled(browser, cluster, "one leader after the heal", lambda s: True)
    (third,) = leaders(shown)

    # Split off the leader with its own button: drawn isolated, the rest go on.
    click(browser, '[data-action="split-leader"]')
    control_answered(browser, "network", "partition")
    isolated = wait_for(
        "a node drawn as isolated",
        lambda: [n for n, v in view(browser).items() if v["isolated"] == "true"],
    )
    assert isolated == [third], f"split off {third}, the view isolates {isolated}"
    settled(
        browser,
        cluster,
        "a leader among the others after splitting off the leader",
        lambda s: leaders(s)[0] != third,
    )
    click(browser, '[data-action="heal"]')
    control_answered(browser, "network", "heal")
    settled(
        browser,
        cluster,
        "the view and status agree after the last heal",
        lambda s: all(n["isolated"] == "false" for n in s.values()),
    )
