"""What runs on hosts: shell scripts and templates. Not code to import: this file makes the folder the resource
package `mistral_lab.infra`, so an install and a checkout find it the same way (see mistral_lab.infra_files)."""
