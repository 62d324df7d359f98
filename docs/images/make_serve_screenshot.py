"""Regenerate docs/images/serve-page.png: `ssd serve` on a checkpoint, one image uploaded in headless Chromium.

    PYTHONPATH=src python docs/images/make_serve_screenshot.py ssd-demo/run/model.ckpt ssd-demo/data/VOC/VOC2007/JPEGImages/000802.jpg

Needs the [serve] extra, selenium, and Debian's chromium + chromium-driver.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

checkpoint, image = sys.argv[1], Path(sys.argv[2]).resolve()
out = Path(__file__).resolve().parent / "serve-page.png"
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
server = subprocess.Popen([sys.executable, "-m", "ssd.cli", "serve", "--checkpoint", checkpoint, "--port", str(port),
                           "--log-level", "warning"], env=os.environ.copy())  # fmt: skip
try:
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            break
        except OSError:
            time.sleep(0.2)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1100,800"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=options)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        WebDriverWait(driver, 15).until(lambda d: "classes" in d.find_element(By.ID, "model-info").text)
        driver.find_element(By.ID, "file").send_keys(str(image))
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done")
        time.sleep(0.3)
        driver.save_screenshot(str(out))
        print(out)
    finally:
        driver.quit()
finally:
    server.terminate()
    server.wait(timeout=10)
