"""Reading pictures: file safety, decoding to grey levels, scanning a folder into studies, preprocessing and the
view cache. See docs/architecture.md.
"""
