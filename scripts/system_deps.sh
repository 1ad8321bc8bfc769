# Sourced by scripts/test: the Debian packages some tests drive for real (a headless Chromium
# for the status page, a Mosquitto broker for the MQTT bridge, a Java runtime for the ISO 15118
# sidecar's EXI codec). Installed when missing and we
# may (root with apt, e.g. CI on a fresh machine); otherwise those tests skip and say why.
CP_AGENT_SYSTEM_PACKAGES=()
command -v chromium >/dev/null 2>&1 || CP_AGENT_SYSTEM_PACKAGES+=(chromium)
command -v chromedriver >/dev/null 2>&1 || CP_AGENT_SYSTEM_PACKAGES+=(chromium-driver)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || CP_AGENT_SYSTEM_PACKAGES+=(mosquitto)
# The ISO 15118 sidecar's EXI codec (the iso15118 package's jar, through py4j) needs a JVM.
command -v java >/dev/null 2>&1 || CP_AGENT_SYSTEM_PACKAGES+=(default-jre-headless)
if [ ${#CP_AGENT_SYSTEM_PACKAGES[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${CP_AGENT_SYSTEM_PACKAGES[*]} (Debian packages used by the tests)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends "${CP_AGENT_SYSTEM_PACKAGES[@]}" >/dev/null) \
      || echo "could not install ${CP_AGENT_SYSTEM_PACKAGES[*]}; the tests that need them skip" >&2
  else
    echo "not installed: ${CP_AGENT_SYSTEM_PACKAGES[*]} (sudo apt install them); the tests" \
         "that need them skip" >&2
  fi
fi
