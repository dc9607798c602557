#!/bin/sh
# For make parity: headless Chromium checks the HTML reports as a person sees them (a slow test). Best effort:
# installed as root on Debian/Ubuntu; otherwise that test fails and names the command that fixes it.
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Chromium for the report rendering test (apt-get install chromium)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || {
    apt-get update -q >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1
  } || echo "warning: could not install Chromium; the report rendering test will fail"
fi
exit 0
