"""Platform installers: how a verified firmware image becomes the running firmware (mock,
command such as swupdate / RAUC / Mender, Python package for the Pi bench rig)."""
