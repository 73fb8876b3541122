"""marlx.attacks"""
