"""Find, load, convert and describe models: diffusers folders, single files, LoRA."""
