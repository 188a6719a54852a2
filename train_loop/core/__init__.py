"""What every part uses: errors and exit statuses, the console, flags from dataclasses, text
normalizers, which process does what, and loading/saving Whisper."""
