"""Screenshots of the explorer's two pages for the README, in Debian's headless chromium.

python scripts/explorer_screenshots.py --dataset data/v1-small.npz --runs RUN_DIR -o docs/img
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--runs", nargs="*", default=[])
    p.add_argument("-o", "--output", default="docs/img")
    args = p.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "galparam.cli.explore", "--dataset", args.dataset, "--port", str(port)]
    server = subprocess.Popen([*command, "--runs", *args.runs] if args.runs else command)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    try:
        for _ in range(180):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1250"):
            options.add_argument(flag)
        browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        try:
            browser.get(f"http://127.0.0.1:{port}")
            time.sleep(15)
            browser.save_screenshot(str(out / "explorer-simulate.png"))
            browser.find_element(By.XPATH, "//*[@data-testid='stSidebar']//p[text()='Dataset']").click()
            time.sleep(20)
            browser.save_screenshot(str(out / "explorer-dataset.png"))
        finally:
            browser.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"wrote {out / 'explorer-simulate.png'} and {out / 'explorer-dataset.png'}")


if __name__ == "__main__":
    main()
