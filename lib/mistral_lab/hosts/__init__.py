"""Where models run: this machine, an SSH host, a DigitalOcean GPU droplet."""
