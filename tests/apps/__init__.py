"""Small apps that subprocess tests load by import string (`tests.apps.NAME:app`)."""
