//! A line of typed text with a cursor and the usual editing keys, from tui-input: Left/Right,
//! Home/End (Ctrl-A/E), Backspace/Delete, Ctrl-U (line), Ctrl-W (word), Ctrl-K (to the end).

use crossterm::event::{Event, KeyEvent};
use tui_input::backend::crossterm::to_input_request;
use tui_input::Input;

#[derive(Debug, Clone, Default)]
pub struct TextInput(Input);

impl TextInput {
    /// `text`, with the cursor at its end.
    pub fn new(text: &str) -> Self {
        Self(Input::new(text.to_string()))
    }

    pub fn value(&self) -> &str {
        self.0.value()
    }

    /// The cursor's display column within the text.
    pub fn cursor(&self) -> usize {
        self.0.visual_cursor()
    }

    /// Apply `key` if it edits the text or moves the cursor; `false` for other keys (Enter,
    /// Esc, Up, Tab, ...), which are the caller's.
    pub fn key(&mut self, key: KeyEvent) -> bool {
        match to_input_request(&Event::Key(key)) {
            Some(request) => {
                self.0.handle(request);
                true
            }
            None => false,
        }
    }
}

impl PartialEq for TextInput {
    fn eq(&self, other: &Self) -> bool {
        self.value() == other.value() && self.0.cursor() == other.0.cursor()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossterm::event::{KeyCode, KeyModifiers};

    fn press(t: &mut TextInput, code: KeyCode, modifiers: KeyModifiers) -> bool {
        t.key(KeyEvent::new(code, modifiers))
    }

    /// Typing lands at the cursor; Home/End, Ctrl-W and Ctrl-U edit as in a shell; Enter and
    /// Up are not editing keys.
    #[test]
    fn edits_at_the_cursor_with_the_usual_keys() {
        let none = KeyModifiers::NONE;
        let mut t = TextInput::new("models/a");
        press(&mut t, KeyCode::Left, none);
        press(&mut t, KeyCode::Char('x'), none);
        assert_eq!((t.value(), t.cursor()), ("models/xa", 8));
        press(&mut t, KeyCode::Home, none);
        press(&mut t, KeyCode::Char('/'), none);
        assert_eq!(t.value(), "/models/xa");
        press(&mut t, KeyCode::End, none);
        press(&mut t, KeyCode::Char('w'), KeyModifiers::CONTROL);
        assert_eq!(t.value(), "/models/");
        press(&mut t, KeyCode::Char('u'), KeyModifiers::CONTROL);
        assert_eq!(t.value(), "");
        assert!(!press(&mut t, KeyCode::Enter, none));
        assert!(!press(&mut t, KeyCode::Up, none));
    }
}
