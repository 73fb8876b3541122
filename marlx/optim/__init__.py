"""marlx.optim"""
