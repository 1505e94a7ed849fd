"""Take docs/dashboard.png: the live view of a 5-node cluster during a re-election.

    .venv/bin/python docs/dashboard_screenshot.py [--out docs/dashboard.png]

Starts a Cluster with the slow preset (a heartbeat a second, election timeouts of
4-8 s, so the campaign lasts long enough to catch), opens its dashboard in
Debian's headless chromium (`make test-tools` installs it), writes a few keys,
kills the leader with the page's own button and captures the page once a
candidate is asking for votes (its vote requests on their way).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from kvcluster.cluster import Cluster

FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1400,1175",  # the cluster, the controls and the timeline
)

# True while a candidate is drawn and its vote requests are on their way.
CAMPAIGNING = """
const campaigning = document.querySelector('#nodes g[data-role="candidate"]');
const asking = Array.from(document.querySelectorAll('#dots circle[data-type="vote"]'))
  .some(c => c.getAttribute('visibility') === 'visible');
return Boolean(campaigning && asking);
"""


def wait(what: str, script: str, driver: WebDriver, timeout: float = 60.0) -> None:
    """Poll a script in the page until it returns true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if driver.execute_script(script):
            return
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("dashboard.png")))
    args = parser.parse_args()
    profile = tempfile.mkdtemp(prefix="kvcluster-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    with Cluster(5, preset="slow") as cluster:
        leader = cluster.wait_for_leader(60)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            driver.get(cluster.dashboard().url)
            with cluster.client() as client:
                for i in range(20):
                    client.put(f"key{i}", f"value {i}")
            # Some calm first, so the timeline has a stretch of the old leader.
            time.sleep(8)
            driver.find_element(
                By.CSS_SELECTOR, f'#node-table button[data-action="kill"][data-node="{leader}"]'
            ).click()
            wait("a candidate asking for votes", CAMPAIGNING, driver)
            time.sleep(0.15)  # let the vote requests get a little way along their links
            driver.save_screenshot(args.out)
            print(f"wrote {args.out}")
        finally:
            driver.quit()
            shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
