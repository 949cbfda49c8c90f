"""Tasks (txt2img, img2img, inpaint, outpaint, hires fix) composed from shared steps."""
