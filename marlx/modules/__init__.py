"""marlx.modules"""
