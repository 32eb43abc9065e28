"""Wi-Fi for ESP32 nodes whose link is TCP. Credentials are provisioned on the board as
/wifi.json ({"ssid": ..., "password": ...}) by the technician, never stored in boards.toml or
the repository. Returns the gateway's address to connect to."""

import asyncio
import json


async def connect_wifi(link, timeout_s=30):
    import network

    try:
        with open("wifi.json") as fh:
            creds = json.load(fh)
    except (OSError, ValueError):
        raise OSError("wifi.json is missing or not JSON: provision it with the board's Wi-Fi credentials")
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if not wlan.isconnected():
        wlan.connect(creds["ssid"], creds["password"])
        waited = 0
        while not wlan.isconnected():
            if waited >= timeout_s * 10:
                raise OSError("Wi-Fi %r: not connected after %d s" % (creds["ssid"], timeout_s))
            await asyncio.sleep(0.1)
            waited += 1
    return link.get("gateway_host") or creds.get("gateway_host") or wlan.ifconfig()[2]
